"""The trunk bundle of ``usv-ray pretrain``: a gray ResNet-18 pretrained without labels,
the starting point of the frame CNN (``classify.pretrained``) and of the detector
(``detect.pretrained``).

Its record names ``trunk.pt`` (the trunk's weights, the projection head dropped), the
ingest settings of the frames it learnt from (a model that starts from it must read frames
made the same way), the method and its settings, the data fingerprint and its validation
figures. :func:`starting_trunk` turns a ``pretrained`` setting into the weights a model
starts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usv_ray.bundle.record import STORED_FRAME_SETTINGS, Bundle, BundleError

KIND = "trunk"
FILE = "trunk.pt"
FRAME_SETTINGS = STORED_FRAME_SETTINGS  # the ingest settings of the frames it learnt from
IMAGENET = "imagenet"  # the other value a `pretrained` setting takes
TRUNK_META = {"model": "gray_resnet18", "in_channels": 1, "feature_dim": 512}  # trunk.pt's


@dataclass
class TrunkModel:
    """A loaded trunk bundle: ``model(frames)`` -> the 512-d feature of each frame."""

    bundle: Bundle
    model: torch.nn.Module  # eval mode
    device: torch.device
    bf16: bool = False  # under bf16 autocast (a GPU's)

    @property
    def record(self) -> dict:
        return self.bundle.record

    @property
    def version(self) -> str:
        return self.bundle.version

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Features ``(B, 512)`` float32 of stored-size uint8 frames ``(B, S, S)``."""
        from usv_ray.imaging import normalise

        images = normalise(torch.from_numpy(np.ascontiguousarray(frames))[:, None])
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            features = self.model(images.to(self.device))
        return features.float().cpu().numpy()

    @classmethod
    def load(cls, bundle: Bundle, device: str | torch.device = "cpu", bf16: bool = False):
        """The trunk of ``bundle`` on ``device`` (bf16: under bf16 autocast)."""
        from usv_ray.models.frame_cnn import gray_resnet18

        model = gray_resnet18()
        model.load_state_dict(trunk_weights(bundle), strict=True)
        return cls(bundle, model.to(device).eval(), torch.device(device), bf16)


def trunk_weights(bundle: Bundle) -> dict[str, torch.Tensor]:
    """The trunk's state dict (:func:`usv_ray.models.frame_cnn.gray_resnet18`'s keys)."""
    from usv_ray.runner import load_model

    weights, _ = load_model(bundle.path(FILE))
    return weights


def check_pretrained(pretrained: str | None, data: Any, setting: str) -> Bundle | None:
    """Check the ``setting`` (``classify.pretrained``, ``detect.pretrained``) before any
    training: None passes; ``imagenet`` needs torchvision's local cache; a path must hold a
    trunk bundle made from frames like those of the ingest folder ``data``. Returns the
    bundle, or None.

    Raises:
        BundleError: no imagenet cache, no trunk bundle there, a damaged one, or one of
            other frame settings.
    """
    from usv_ray.bundle.record import read
    from usv_ray.models.frame_cnn import imagenet_weights_path

    try:
        if pretrained == IMAGENET:
            imagenet_weights_path()
        if pretrained in (None, IMAGENET):
            return None
        bundle = read(pretrained, KIND)
        bundle.check_data(data)
    except (BundleError, FileNotFoundError) as exc:
        raise BundleError(f"{setting}: {exc}") from exc
    return bundle


def starting_trunk(pretrained: str | None) -> dict[str, torch.Tensor] | None:
    """The trunk weights a model starts from for a ``pretrained`` setting: None (random
    initialisation), ``imagenet`` (torchvision's cached ResNet-18, its RGB conv1 summed to
    gray), or a trunk bundle's folder (read and verified)."""
    if pretrained is None:
        return None
    if pretrained == IMAGENET:
        from usv_ray.models.frame_cnn import cached_imagenet_weights, gray_imagenet

        return gray_imagenet(cached_imagenet_weights())
    from usv_ray.bundle.record import read

    return trunk_weights(read(Path(pretrained), KIND))
