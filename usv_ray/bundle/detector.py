"""The detector bundle, loaded: the nodule detector ingest runs on every frame of a video
without annotations (:class:`DetectorModel`).

Its record (written by ``usv-ray detect``) names ``detector.pt`` and the ingest settings
its frames must be made with (the crop, the field of view, the frame size: ingest feeds it
frames cut and resized as it stores them), its test AP and how it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from usv_ray.bundle.record import STORED_FRAME_SETTINGS, Bundle

KIND = "detector"
FILE = "detector.pt"
FRAME_SETTINGS = STORED_FRAME_SETTINGS  # the ingest settings of the frames it reads


@dataclass
class DetectorModel:
    """A loaded detector bundle: ``model(frames)`` -> per frame ``(boxes, scores)``."""

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

    @classmethod
    def load(cls, bundle: Bundle, device: str | torch.device = "cpu", bf16: bool = False):
        """The detector of ``bundle`` on ``device`` (bf16: detecting under bf16 autocast)."""
        from usv_ray.models import load

        model, _ = load(bundle.path(FILE), device)
        return cls(bundle, model, torch.device(device), bf16)
