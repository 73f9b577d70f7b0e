"""A DICOM cine (or single image) as gray uint8 frames, decoded with pydicom
(:class:`DicomClip`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usv_ray.ingest.clip import LUMA_WEIGHTS, VideoError, check_size


class DicomClip:
    """A DICOM cine (or single image) decoded with pydicom into windowed gray uint8.

    8-bit monochrome pixels are returned as stored. Deeper pixels get the modality LUT
    (RescaleSlope/Intercept), then the first VOI window (WindowCenter/WindowWidth, DICOM
    linear formula) when the file has one, else a min-max stretch over the whole clip, so
    frames of one clip stay comparable. MONOCHROME1 is inverted; colour becomes BT.601 luma.
    """

    def __init__(self, path: Path, max_frame_pixels: int):
        import pydicom
        from pydicom.errors import InvalidDicomError

        try:
            ds = pydicom.dcmread(path, force=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as e:
            raise VideoError("not_video", f"{path}: unreadable DICOM ({e})") from e
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise VideoError("no_pixel_data", f"{path}: DICOM without pixel data")
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
        except (AttributeError, TypeError, ValueError) as e:
            raise VideoError("not_video", f"{path}: DICOM without Rows/Columns") from e
        check_size(cols, rows, max_frame_pixels, path)
        try:
            pixels = ds.pixel_array
        except (RuntimeError, NotImplementedError) as e:
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", str(syntax))
            raise VideoError(
                "unsupported_dicom",
                f"{path}: cannot decode transfer syntax {name!r}; install one of the "
                f"pydicom pixel-data plugins it lists: {e}",
            ) from e
        except (ValueError, AttributeError, KeyError) as e:
            raise VideoError("decode_error", f"{path}: bad DICOM pixel data ({e})") from e

        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        colour = int(ds.get("SamplesPerPixel", 1)) > 1
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            pixels, colour = apply_color_lut(pixels, ds), True
        # Normalise to (F, H, W) or (F, H, W, 3).
        if n_frames == 1 and pixels.ndim == (3 if colour else 2):
            pixels = pixels[None]
        self._pixels = pixels
        self._colour = colour
        self._invert = photometric == "MONOCHROME1"
        self._window: tuple[float, float] | None = None
        self._slope = float(ds.get("RescaleSlope", 1) or 1)
        self._intercept = float(ds.get("RescaleIntercept", 0) or 0)
        self._as_stored = colour or (pixels.dtype == np.uint8 and "WindowWidth" not in ds)
        if not self._as_stored:
            if "WindowCenter" in ds and "WindowWidth" in ds:
                center, width = ds.WindowCenter, ds.WindowWidth
                center = center[0] if isinstance(center, Sequence) else center
                width = width[0] if isinstance(width, Sequence) else width
                self._window = (float(center), max(float(width), 1.0))
            else:
                lo = float(pixels.min()) * self._slope + self._intercept
                hi = float(pixels.max()) * self._slope + self._intercept
                self._min_max = (lo, hi)
        self.n_frames = pixels.shape[0]
        self.height, self.width = int(pixels.shape[1]), int(pixels.shape[2])
        self.fps = self._fps(ds)
        patient_id = str(ds.get("PatientID", "") or "").strip()
        study = str(ds.get("StudyInstanceUID", "") or ds.get("StudyDate", "") or "").strip()
        self.patient_id = patient_id or None
        self.study_id = study or None

    @staticmethod
    def _fps(ds: Any) -> float:
        for key in ("CineRate", "RecommendedDisplayFrameRate"):
            if ds.get(key):
                return float(ds.get(key))
        frame_time_ms = ds.get("FrameTime")
        if frame_time_ms and float(frame_time_ms) > 0:
            return 1000.0 / float(frame_time_ms)
        return 0.0

    def frame(self, i: int) -> np.ndarray:
        """Gray uint8 (H, W) of frame ``i``."""
        raw = self._pixels[i]  # (H, W) or (H, W, 3)
        if self._colour:
            rgb = raw.astype(np.uint32)
            return ((rgb @ LUMA_WEIGHTS + 128) >> 8).astype(np.uint8)
        if self._as_stored:
            gray = raw.astype(np.uint8, copy=True)
        else:
            value = raw.astype(np.float64) * self._slope + self._intercept
            if self._window is not None:
                center, width = self._window
                scaled = ((value - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
            else:
                lo, hi = self._min_max
                scaled = (value - lo) * (255.0 / (hi - lo)) if hi > lo else value * 0.0
            gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return 255 - gray if self._invert else gray
