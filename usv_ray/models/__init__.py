"""Every network of the project, shared by the stages that train them and the bundles that
run them: the frame CNN and its ResNet-18 trunk (:mod:`~usv_ray.models.frame_cnn`), the
LSTMs over frame features (:mod:`~usv_ray.models.lstm`), the 3D CNNs
(:mod:`~usv_ray.models.video`), the re-ID models (:mod:`~usv_ray.models.reid`), the
nodule detectors (:mod:`~usv_ray.models.detector`) and the trunk's self-supervised
pretraining network (:mod:`~usv_ray.models.contrastive`).

A finished-model file (:mod:`usv_ray.runner.files`) records in its metadata which network it
holds (``model``) and its shape; :func:`build` makes that network afresh from it, ready for
its ``load_state_dict``, through one explicit dict of choices (:data:`BUILDERS`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn


def _frame_cnn(meta: Mapping[str, Any]) -> nn.Module:
    from usv_ray.models.frame_cnn import FrameCNN

    return FrameCNN(tuple(meta["hidden_sizes"]), meta["num_classes"])


def _lstm(meta: Mapping[str, Any]) -> nn.Module:
    from usv_ray.models.lstm import VariableFrameLSTM

    return VariableFrameLSTM(
        meta["input_size"], meta["hidden"], meta["num_layers"], meta["num_classes"]
    )


def _video(meta: Mapping[str, Any]) -> nn.Module:
    from usv_ray.models.video import build_video_model

    return build_video_model(meta["model"])


def _reid(meta: Mapping[str, Any]) -> nn.Module:
    from usv_ray.models.reid import build_reid_model

    return build_reid_model(meta["model"], meta.get("n_identities", 0))


def _contrastive(meta: Mapping[str, Any]) -> nn.Module:
    from usv_ray.models.contrastive import ContrastiveTrunk

    return ContrastiveTrunk(meta["projection"])


def _detector(meta: Mapping[str, Any]) -> nn.Module:
    from usv_ray.models.detector import build_detector

    return build_detector(meta)


# a model file's ``model`` -> the function that builds that network from its metadata
BUILDERS: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "FrameCNN": _frame_cnn,
    "VariableFrameLSTM": _lstm,
    "C3D_BN": _video,
    "R3D": _video,
    "R(2+1)D": _video,
    "CM": _reid,
    "VM": _reid,
    "centernet": _detector,
    "fcos": _detector,
    "ContrastiveTrunk": _contrastive,
}


def build(meta: Mapping[str, Any]) -> nn.Module:
    """A freshly built network of the kind and shape a model file's metadata records.

    Raises:
        ValueError: for metadata of an unknown network, or without its shape.
    """
    kind = meta.get("model")
    if kind not in BUILDERS:
        raise ValueError(f"unknown model {kind!r} in a model file (known: {', '.join(BUILDERS)})")
    try:
        return BUILDERS[kind](meta)
    except KeyError as exc:
        raise ValueError(f"the {kind} model file does not record its {exc} setting") from exc


def load(path: Any, device: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The network in a finished-model file, its weights loaded, in eval mode on
    ``device``, and the file's metadata."""
    from usv_ray.runner.files import load_model

    weights, meta = load_model(path)
    model = build(meta)
    model.load_state_dict(weights)
    return model.to(device).eval(), meta
