"""DICOM cine in every transfer syntax a PACS sends for ultrasound, as ingest reads it.

The corpus is made here: one cine per syntax, encoded by pydicom with the same plugins
that decode it (RLE, JPEG-LS, JPEG 2000), by Pillow (JPEG Baseline, gray and YBR_FULL_422
colour), or written by pydicom (uncompressed, Deflated). JPEG Lossless and JPEG Extended
have no encoder among the locked wheels: their cines repeat the compressed frame of a file
that pydicom ships, and are held against pydicom's own decoding of it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pydicom import uid

from usv_ray.ingest.decode import VideoError, VideoReader

FRAMES, HEIGHT, WIDTH = 5, 48, 64


def _clip(colour: bool = False) -> np.ndarray:
    """A smooth moving pattern (what lossy codecs keep well): (F, H, W) or (F, H, W, 3)."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    gray = np.stack([(40 + 2 * xx + yy + 9 * t) % 220 for t in range(FRAMES)]).astype(np.uint8)
    if not colour:
        return gray
    return np.stack([gray, 255 - gray, gray // 2], axis=-1)


def _dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2"):
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # US multi-frame
    ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.FrameTime = "US", 40.0
    ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[1:3]
    ds.SamplesPerPixel = 3 if pixels.ndim == 4 else 1
    if pixels.ndim == 4:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = pixels.tobytes()
    return ds


def _luma(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).round()


def _read(path: Path, indices: list[int] | None = None) -> np.ndarray:
    with VideoReader(path) as reader:
        assert reader.info.n_frames == FRAMES and reader.info.codec == "dicom"
        got = list(reader.frames(indices))
    assert [i for i, _ in got] == (indices or list(range(FRAMES)))
    return np.stack([f for _, f in got]).astype(np.int64)


# (transfer syntax, encoder options, largest and mean error allowed per pixel)
ENCODED = [
    (uid.RLELossless, {}, 0, 0),
    (uid.JPEGLSLossless, {}, 0, 0),
    (uid.JPEGLSNearLossless, {"jls_error": 2}, 2, 2),
    (uid.JPEG2000Lossless, {}, 0, 0),
    (uid.JPEG2000, {"j2k_psnr": [45]}, 255, 1.5),  # lossy: a mean error, not a bound
]


@pytest.mark.parametrize(("syntax", "options", "largest", "mean"), ENCODED, ids=str)
def test_encoded_cines_decode_within_the_codecs_tolerance(tmp_path, syntax, options, largest, mean):
    clip = _clip()
    ds = _dataset(clip)
    ds.compress(syntax, **options)
    path = tmp_path / "cine.dcm"
    ds.save_as(path, enforce_file_format=True)
    frames = _read(path)
    error = np.abs(frames - clip)
    assert error.max() <= largest and error.mean() <= mean
    np.testing.assert_array_equal(_read(path, [1, 4]), frames[[1, 4]])  # only those decoded


@pytest.mark.parametrize(
    "syntax",
    [uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian],
    ids=str,
)
def test_uncompressed_and_deflated_cines_are_exact(tmp_path, syntax):
    clip = _clip()
    ds = _dataset(clip)
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "cine.dcm"
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(_read(path), clip)


def test_uncompressed_ybr_full_comes_back_as_its_rgb(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = _clip(colour=True)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    ds = _dataset(ybr, "YBR_FULL")
    path = tmp_path / "ybr.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert np.abs(_read(path) - _luma(rgb)).max() <= 2  # the conversions' rounding


def _jpeg_baseline(pixels: np.ndarray, photometric: str, subsampling: int) -> bytes:
    """A cine of Pillow's JPEG frames, encapsulated as JPEG Baseline."""
    from PIL import Image
    from pydicom.encaps import encapsulate

    frames = []
    for frame in pixels:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, "JPEG", quality=95, subsampling=subsampling)
        frames.append(buffer.getvalue())
    ds = _dataset(pixels, photometric)
    ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    return ds


def test_jpeg_baseline_gray_and_ybr_full_422(tmp_path):
    gray = _clip()
    path = tmp_path / "gray.dcm"
    _jpeg_baseline(gray, "MONOCHROME2", 0).save_as(path, enforce_file_format=True)
    assert np.abs(_read(path) - gray).mean() < 2

    rgb = _clip(colour=True)
    path = tmp_path / "ybr.dcm"
    _jpeg_baseline(rgb, "YBR_FULL_422", 1).save_as(path, enforce_file_format=True)  # 4:2:2
    assert np.abs(_read(path) - _luma(rgb)).mean() < 3  # YBR came back as RGB, then luma


@pytest.mark.parametrize(
    ("shipped", "syntax"),
    [
        ("SC_rgb_jpeg_gdcm.dcm", uid.JPEGLosslessSV1),
        ("JPGExtended.dcm", uid.JPEGExtended12Bit),
    ],
)
def test_jpeg_lossless_and_extended_cines(tmp_path, shipped, syntax):
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate, generate_frames

    source = dcmread(get_testdata_file(shipped))
    assert source.file_meta.TransferSyntaxUID == syntax
    frame = next(generate_frames(source.PixelData, number_of_frames=1))
    source.PixelData = encapsulate([frame] * FRAMES)
    source.NumberOfFrames = FRAMES
    path = tmp_path / "cine.dcm"
    source.save_as(path)
    expected = dcmread(get_testdata_file(shipped)).pixel_array
    frames = _read(path)
    if expected.ndim == 3:  # RGB, lossless: its luma, to the rounding
        assert np.abs(frames - _luma(expected)).max() <= 1
    else:  # 12-bit gray: the min-max stretch over the clip, every frame alike
        stretched = (expected - expected.min()) * 255.0 / (expected.max() - expected.min())
        assert np.abs(frames - stretched.round()).max() <= 1
    assert (frames == frames[0]).all()


def test_palette_colour_goes_through_its_lookup_table():
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut

    path = Path(get_testdata_file("examples_palette.dcm"))
    ds = dcmread(path)
    with VideoReader(path) as reader:
        (_, frame), *_ = list(reader.frames([0]))
    rgb = apply_color_lut(ds.pixel_array, ds)
    assert rgb.dtype == np.uint16  # a 16-bit table: its top byte is what reaches the frame
    assert np.abs(frame - _luma(rgb >> 8)).max() <= 1


def test_a_damaged_frame_is_a_decode_error(tmp_path):
    from pydicom.encaps import encapsulate

    ds = _dataset(_clip())
    ds.compress(uid.JPEGLSLossless)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"] * FRAMES)  # no image in any frame
    path = tmp_path / "bad.dcm"
    ds.save_as(path, enforce_file_format=True)
    with VideoReader(path) as reader, pytest.raises(VideoError) as caught:
        list(reader.frames())
    assert caught.value.kind == "decode_error"


def test_a_folder_of_every_syntax_ingests_with_exact_frame_counts(tmp_path):
    """What a PACS export looks like to ingest: one cine per transfer syntax, one manifest,
    ingested in this process; every video ok, with all its frames."""
    import pyarrow.parquet as pq

    from usv_ray.config import Config, IngestConfig, PrivacyConfig, RayConfig
    from usv_ray.ingest.pipeline import run_ingest

    rows = ["video,patient_id,label"]
    for number, (syntax, options, _, _) in enumerate(ENCODED):
        ds = _dataset(_clip())
        ds.compress(syntax, **options)
        ds.save_as(tmp_path / f"cine{number}.dcm", enforce_file_format=True)
        rows.append(f"cine{number}.dcm,P{number},benign")
    _jpeg_baseline(_clip(colour=True), "YBR_FULL_422", 1).save_as(
        tmp_path / "ybr.dcm", enforce_file_format=True
    )
    rows.append("ybr.dcm,PY,malignant")
    deflated = _dataset(_clip())
    deflated.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    deflated.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    rows.append("deflated.dcm,PD,benign")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    cfg = Config(
        ray=RayConfig(progress=False),
        privacy=PrivacyConfig(dev_key=True),
        ingest=IngestConfig(sampling="all", frame_size=32, workers=0),
    )
    summary = run_ingest(cfg, tmp_path / "manifest.csv", tmp_path / "data")
    assert summary.ok == len(rows) - 1 and summary.failed == 0
    videos = pq.read_table(tmp_path / "data" / "videos.parquet").to_pandas()
    assert (videos["n_frames"] == FRAMES).all() and (videos["codec"] == "dicom").all()
    for video_id in videos["video_id"]:
        frames = pq.read_table(tmp_path / "data" / "frames" / f"{video_id}.parquet")
        assert frames.num_rows == FRAMES
