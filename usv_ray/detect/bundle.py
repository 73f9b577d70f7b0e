"""The detector bundle: the trained nodule detector as a product ingest can run anywhere.

``usv-ray detect`` ends by writing ``DET/bundle/`` (:mod:`usv_ray.bundle` holds the layout
and its checks): ``detector.pt`` (the weights of the best epoch, with the model's kind and
input size) and ``bundle.json`` with the ingest settings its frames must be made with (the
crop, the field of view, the frame size: ingest feeds it frames cut and resized as it
stores them), its test AP and how it was trained. Ingest loads it with
``--set ingest.detector=DET/bundle`` and refuses it when its own settings differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usv_ray.bundle import read_bundle

KIND = "detector"
FILE = "detector.pt"
# the ingest settings that make the frames it reads: the stored frames' own
FRAME_SETTINGS = ("frame_size", "crop_box", "trim_fov", "fov_threshold")


@dataclass
class DetectorModel:
    """A loaded detector bundle: ``model(frames)`` -> per frame ``(boxes, scores)``."""

    record: dict[str, Any]
    model: torch.nn.Module  # eval mode
    device: torch.device
    bf16: bool = False  # under bf16 autocast (a GPU's)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Detections in a batch of stored-size frames ``(B, S, S)`` uint8: per frame,
        boxes ``(k, 4)`` in its pixels and scores ``(k,)``."""
        from usv_ray.imaging import normalise

        images = normalise(torch.from_numpy(np.ascontiguousarray(frames))[:, None])
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            found = self.model(images.to(self.device))
        return [
            (b.float().cpu().numpy().astype(np.float64), s.float().cpu().numpy()) for b, s in found
        ]


def load_detector_bundle(
    path: str | Path, device: str = "cpu", bf16: bool = False
) -> DetectorModel:
    """The detector bundle at ``path`` (a bundle folder or a detect folder) on ``device``
    (with ``bf16``: detecting under bf16 autocast).

    Raises:
        BundleError: not a detector bundle, an unknown format, a missing or damaged file.
    """
    from usv_ray.detect.models import build_detector
    from usv_ray.train import load_model

    folder, record = read_bundle(path, KIND)
    state, meta = load_model(folder / FILE)
    model = build_detector(meta)
    model.load_state_dict(state)
    return DetectorModel(record, model.to(device).eval(), torch.device(device), bf16)
