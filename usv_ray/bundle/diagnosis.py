"""The diagnosis bundle, loaded: the variable-frame CNN-LSTM of ``usv-ray classify`` ready to
read a video (:class:`DiagnosisModel`).

Its record (written by :mod:`usv_ray.classify.bundle`) names the members (each fold's frame
CNN and variable-frame LSTM, and the final pair), the calibrator, the operating point and
its whole trade-off. A video's raw P(malignant) is the mean of the members' P, their
standard deviation its spread; the calibrated P is read at the threshold. A video's stored
frames (and tracklets) are read for it by :func:`read_video`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from usv_ray.bundle.record import STORED_FRAME_SETTINGS, Bundle
from usv_ray.evaluate.calibration import Calibrator

KIND = "diagnosis"
# the ingest settings a diagnosis bundle needs its frames made with
FRAME_SETTINGS = ("sampling", "n_frames", *STORED_FRAME_SETTINGS)
FEATURE_CHUNK = 256  # frames through a member's CNN at once


def read_video(
    frames: str, tracklets: str | None, shards: dict | None = None
) -> tuple[torch.Tensor, np.ndarray, pa.Table]:
    """A video's stored frames ``(T, 1, S, S)`` uint8 in frame order, their source indices
    ``(T,)``, and its tracklets (tracklet_id, frame_index; empty without a shard), each
    shard checked against what ingest ``shards`` recorded of it (its journal's).

    Raises:
        DamagedDataError: a shard missing, damaged or unreadable.
        ValueError: a shard with no frames, or frames of different or wrong sizes.
    """
    from usv_ray.layout import read_checked

    shards = shards or {}
    columns = ["frame_index", "seq_index", "image", "height", "width"]
    table = read_checked(frames, shards.get("frames"), columns)
    if table.num_rows == 0:
        raise ValueError("the frames shard holds no frame")
    table = table.sort_by("seq_index")
    heights, widths = set(table["height"].to_pylist()), set(table["width"].to_pylist())
    if len(heights) != 1 or len(widths) != 1:
        raise ValueError(f"frames of several sizes: heights {heights}, widths {widths}")
    size = (heights.pop(), widths.pop())
    images = table["image"].to_pylist()
    if any(len(image) != size[0] * size[1] for image in images):
        raise ValueError(f"a frame's bytes do not make {size[0]} x {size[1]} pixels")
    pixels = np.frombuffer(b"".join(images), np.uint8).reshape(len(images), 1, *size)
    index = table["frame_index"].to_numpy()
    if tracklets:
        tracks = read_checked(tracklets, shards.get("tracklets"), ["tracklet_id", "frame_index"])
    else:
        tracks = pa.table({"tracklet_id": pa.array([], pa.string()), "frame_index": []})
    return torch.from_numpy(pixels.copy()), index, tracks


@dataclass
class DiagnosisModel:
    """A loaded diagnosis bundle: its members on ``device``, its calibrator and threshold."""

    bundle: Bundle
    members: list[tuple[torch.nn.Module, torch.nn.Module]]  # (frame CNN, LSTM), eval mode
    calibrator: Calibrator
    device: torch.device
    bf16: bool = False  # the frame CNN under bf16 autocast (GPU inference)

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def record(self) -> dict:
        return self.bundle.record

    @property
    def threshold(self) -> float:
        """The operating point: calibrated P at or above it reads malignant."""
        return float(self.record["operating_point"]["threshold"])

    @property
    def frame_size(self) -> int:
        return int(self.bundle.ingest["frame_size"])

    @torch.no_grad()
    def member_probs(
        self, images: torch.Tensor, spans: Sequence[np.ndarray] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each member's raw P(malignant) of one video and of each span of its frames.

        ``images``: the video's stored frames ``(T, 1, S, S)`` uint8 in frame order;
        ``spans``: positions into them (a tracklet's frames), each non-empty. Returns
        ``(video (M,), spans (len(spans), M))`` for the M members.

        Raises:
            ValueError: frames of another size than the bundle's, or an empty span.
        """
        from usv_ray.imaging import normalise
        from usv_ray.models.lstm import pad_features

        if images.ndim != 4 or images.shape[-2:] != (self.frame_size, self.frame_size):
            raise ValueError(
                f"frames of {tuple(images.shape[-2:])} px, the bundle reads "
                f"{self.frame_size} x {self.frame_size}"
            )
        inputs = normalise(images.to(self.device))  # (T, 1, S, S)
        sequences = [torch.arange(len(images))] + [torch.as_tensor(s) for s in spans]
        video, parts = [], []
        for cnn, lstm in self.members:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                # in chunks: a video of every frame (ingest.sampling all) may be long
                chunks = [cnn.features(c).float() for c in inputs.split(FEATURE_CHUNK)]
            features = torch.cat(chunks)  # (T, 512)
            padded, lengths = pad_features([features[s.to(self.device)] for s in sequences])
            probs = lstm(padded, lengths)[:, 1].cpu().numpy()  # (1 + len(spans),)
            video.append(probs[0])
            parts.append(probs[1:])
        return np.array(video, np.float64), np.stack(parts, axis=1).astype(np.float64)

    @classmethod
    def load(cls, bundle: Bundle, device: str | torch.device = "cpu", bf16: bool = False):
        """The members of ``bundle`` on ``device`` (bf16: the CNN under bf16 autocast)."""
        from usv_ray.models import load

        device = torch.device(device)
        members = []
        for member in bundle.record["members"]:
            cnn, _ = load(bundle.path(member["cnn"]), device)
            lstm, _ = load(bundle.path(member["lstm"]), device)
            members.append((cnn, lstm))
        calibrator = Calibrator.from_dict(bundle.record["calibrator"])
        return cls(bundle, members, calibrator, device, bf16)
