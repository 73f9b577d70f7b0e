"""A DICOM cine (or single image) as gray uint8 frames, decoded frame by frame with pydicom
and its pixel-data plugins (:class:`DicomClip`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usv_ray.ingest.clip import LUMA_WEIGHTS, VideoError, check_size


class DicomClip:
    """A DICOM cine (or single image) decoded with pydicom, frame by frame, into windowed
    gray uint8.

    Every transfer syntax a PACS sends for ultrasound decodes: uncompressed, Deflated and
    RLE by pydicom itself, JPEG Baseline, Extended and Lossless by pylibjpeg-libjpeg,
    JPEG-LS by pyjpegls, JPEG 2000 by pylibjpeg-openjpeg. Only the frames asked for are
    read from the file and decoded, one at a time (pydicom's frame-level decoding), so a
    video's memory is one frame's, whatever its length (a Deflated file, rare, is inflated
    whole first). YBR colour comes out as RGB, PALETTE
    COLOR through its lookup table.

    8-bit monochrome pixels are returned as stored. Deeper pixels get the modality LUT
    (RescaleSlope/Intercept), then the first VOI window (WindowCenter/WindowWidth, DICOM
    linear formula) when the file has one, else a min-max stretch over the whole clip (one
    extra pass over its frames), so frames of one clip stay comparable. MONOCHROME1 is
    inverted; colour becomes BT.601 luma.
    """

    def __init__(self, path: Path, max_frame_pixels: int):
        import pydicom
        from pydicom.errors import InvalidDicomError

        self._path = path
        try:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            has_pixels = _has_pixel_data(path)
        except (InvalidDicomError, OSError, ValueError, EOFError) as e:
            raise VideoError("not_video", f"{path}: unreadable DICOM ({e})") from e
        if not has_pixels:
            raise VideoError("no_pixel_data", f"{path}: DICOM without pixel data")
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
        except (AttributeError, TypeError, ValueError) as e:
            raise VideoError("not_video", f"{path}: DICOM without Rows/Columns") from e
        check_size(cols, rows, max_frame_pixels, path)
        _check_decoder(ds, path)
        self._ds = ds
        self._inflated: Any = None  # a Deflated file, read whole on first use
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        self._palette = photometric == "PALETTE COLOR"
        self._colour = int(ds.get("SamplesPerPixel", 1)) > 1 or self._palette
        self._invert = photometric == "MONOCHROME1"
        self._window: tuple[float, float] | None = None
        self._min_max: tuple[float, float] | None = None
        self._slope = float(ds.get("RescaleSlope", 1) or 1)
        self._intercept = float(ds.get("RescaleIntercept", 0) or 0)
        deep = int(ds.get("BitsAllocated", 8) or 8) > 8
        self._as_stored = self._colour or (not deep and "WindowWidth" not in ds)
        if not self._as_stored and "WindowCenter" in ds and "WindowWidth" in ds:
            center, width = ds.WindowCenter, ds.WindowWidth
            center = center[0] if isinstance(center, Sequence) else center
            width = width[0] if isinstance(width, Sequence) else width
            self._window = (float(center), max(float(width), 1.0))
        self.n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        self.height, self.width = rows, cols
        self.fps = self._fps(ds)
        patient_id = str(ds.get("PatientID", "") or "").strip()
        study = str(ds.get("StudyInstanceUID", "") or ds.get("StudyDate", "") or "").strip()
        self.patient_id = patient_id or None
        self.study_id = study or None
        self.image_region = image_region(ds, cols, rows)

    @staticmethod
    def _fps(ds: Any) -> float:
        for key in ("CineRate", "RecommendedDisplayFrameRate"):
            if ds.get(key):
                return float(ds.get(key))
        frame_time_ms = ds.get("FrameTime")
        if frame_time_ms and float(frame_time_ms) > 0:
            return 1000.0 / float(frame_time_ms)
        return 0.0

    def _decoded(self, indices: list[int]) -> Iterator[np.ndarray]:
        """The stored pixels of ``indices`` (sorted), one frame at a time: (H, W) or
        (H, W, 3) RGB; VideoError("decode_error") for a frame that does not decode."""
        from pydicom.pixels import apply_color_lut, iter_pixels

        frames = iter_pixels(self._source(), indices=indices)
        for i in indices:
            try:
                pixels = next(frames)
            except StopIteration:
                raise VideoError(
                    "decode_error", f"{self._path}: frame {i} of {self.n_frames} is missing"
                ) from None
            except (ValueError, RuntimeError, AttributeError, KeyError, EOFError) as e:
                raise VideoError("decode_error", f"{self._path}: frame {i}: {e}") from e
            if self._palette:  # 8- or 16-bit tables: 16-bit entries keep their top byte
                pixels = apply_color_lut(pixels, self._ds)
                pixels = pixels >> 8 if pixels.dtype.itemsize > 1 else pixels
            yield pixels

    def _source(self) -> Path | Any:
        """What frames are read from: the file, so that only the frames asked for are read;
        a Deflated file inflated whole (its frames cannot be reached in the compressed
        stream)."""
        import pydicom
        from pydicom.uid import DeflatedExplicitVRLittleEndian

        meta = getattr(self._ds, "file_meta", None)
        if getattr(meta, "TransferSyntaxUID", None) != DeflatedExplicitVRLittleEndian:
            return self._path
        if self._inflated is None:  # once per video, however many passes read it
            self._inflated = pydicom.dcmread(self._path, force=True)
        return self._inflated

    def frames(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Gray uint8 (H, W) of each of ``indices`` (sorted, in range), decoded one by one."""
        if not self._as_stored and self._window is None and self._min_max is None:
            lo, hi = np.inf, -np.inf  # the clip's range: one pass, a frame at a time
            for raw in self._decoded(list(range(self.n_frames))):
                lo, hi = min(lo, float(raw.min())), max(hi, float(raw.max()))
            ends = sorted((lo * self._slope + self._intercept, hi * self._slope + self._intercept))
            self._min_max = (ends[0], ends[1])
        for i, raw in zip(indices, self._decoded(indices), strict=True):
            yield i, self._gray(raw)

    def _gray(self, raw: np.ndarray) -> np.ndarray:
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


def image_region(ds: Any, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The bounding box (x0, y0, x1, y1, end-exclusive, within the frame) of the 2D regions
    of the header's SequenceOfUltrasoundRegions (RegionSpatialFormat 1: tissue and colour
    flow images, not M-mode, Doppler spectra or waveforms); None without such a region."""
    boxes = []
    for region in ds.get("SequenceOfUltrasoundRegions", None) or []:
        try:
            if int(region.get("RegionSpatialFormat", 0)) != 1:
                continue
            x0, y0 = int(region.RegionLocationMinX0), int(region.RegionLocationMinY0)
            x1, y1 = int(region.RegionLocationMaxX1) + 1, int(region.RegionLocationMaxY1) + 1
        except (AttributeError, TypeError, ValueError):
            continue  # an incomplete region says nothing
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x0 < x1 and y0 < y1:
            boxes.append((x0, y0, x1, y1))
    if not boxes:
        return None
    x0s, y0s, x1s, y1s = zip(*boxes, strict=True)
    return min(x0s), min(y0s), max(x1s), max(y1s)


def _has_pixel_data(path: Path) -> bool:
    """Whether the file holds pixel data, read without loading it."""
    import pydicom

    tags = [0x7FE00010, 0x7FE00008, 0x7FE00009]  # PixelData, Float-, DoubleFloatPixelData
    ds = pydicom.dcmread(path, force=True, specific_tags=tags, defer_size=256)
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _check_decoder(ds: Any, path: Path) -> None:
    """VideoError("unsupported_dicom") naming what is missing, when no installed plugin
    decodes the file's transfer syntax."""
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        return  # a file without meta: pydicom reads it as implicit little endian
    name = getattr(syntax, "name", str(syntax))
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as e:
        raise VideoError(
            "unsupported_dicom", f"{path}: no decoder for transfer syntax {name!r}"
        ) from e
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise VideoError(
            "unsupported_dicom",
            f"{path}: cannot decode transfer syntax {name!r}; install one of the pydicom "
            f"pixel-data plugins it lists: {missing}",
        )
