"""What every reader of a clip shares: the error a bad clip is (:class:`VideoError`, with
its kind), what is known of a clip once opened (:class:`VideoInfo`), the frame-size cap,
and the BT.601 weights that turn colour into gray."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from usv_ray.errors import UsvRayError

# BT.601 luma weights, in 1/256 (sum 256): colour pixels to gray
LUMA_WEIGHTS = np.array([77, 150, 29], dtype=np.uint32)


class VideoError(UsvRayError):
    """A video that cannot be read; ``kind`` is a short machine-readable reason.

    Kinds: missing_file, empty_file, not_video, no_video_stream, truncated, decode_error,
    no_pixel_data, unsupported_dicom, frame_too_large, no_frames.
    """

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a clip right after opening it."""

    n_frames: int  # frames a full plain PyAV decode (or the DICOM) yields
    fps: float  # frames per second; 0.0 when the file does not say
    width: int
    height: int
    codec: str  # FFmpeg codec name ("h264", "gif", "mpeg2video", ...) or "dicom"
    patient_id: str | None  # DICOM PatientID, else None
    study_id: str | None  # DICOM StudyInstanceUID (or StudyDate), else None
    # DICOM: the bounding box (x0, y0, x1, y1, pixels, end-exclusive) of the header's 2D
    # ultrasound regions; None without them, and for other files
    image_region: tuple[int, int, int, int] | None = None


def check_size(width: int, height: int, max_frame_pixels: int, path: Path) -> None:
    if width * height > max_frame_pixels:
        raise VideoError(
            "frame_too_large",
            f"{path}: {width}x{height} frames exceed max_frame_pixels={max_frame_pixels}",
        )


def is_dicom(path: str | Path) -> bool:
    """True when ``path`` has the DICOM b"DICM" magic at byte 128 or a ``.dcm`` suffix."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM" or path.suffix.lower() == ".dcm"
