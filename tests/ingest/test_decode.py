"""Tests for usv_ray.ingest.decode: frame counts, sampling, luma fast path and errors."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from usv_ray.ingest.decode import VideoError, VideoReader, luma_of_frame

REAL_SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "real_samples"
REAL_FILES = {
    "Cov-Atlas+(45).gif": 21,
    "Reg-Atlas-alines.gif": 60,
    "Cov_recommendations_likebutterfly_mov5.mov": 138,
    "Reg_recommendations_alines_mov1.mov": 180,
    "Pneu_liftl_pneu_case3_clip3.mp4": 25,
    "Reg_Avi_Video_003.mp4": 84,
    "Pneu_northumbria_0409_set1_vid1.avi": 90,
    "Reg_pat1Image_133410.mpeg": 183,
    "Reg_pat2Image_134441.mpeg": 215,
}
SAMPLED_REAL = [
    "Reg_recommendations_alines_mov1.mov",
    "Pneu_northumbria_0409_set1_vid1.avi",
    "Reg_pat1Image_133410.mpeg",
    "Cov-Atlas+(45).gif",
]


def _real(name: str) -> Path:
    if not REAL_SAMPLES.is_dir():
        pytest.skip(f"real samples folder {REAL_SAMPLES} is absent")
    return REAL_SAMPLES / name


def _gray_clip(n_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Moving gradient plus a bright line plus noise, so frames differ: (T, H, W) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    clip = np.empty((n_frames, height, width), np.uint8)
    for t in range(n_frames):
        img = (xx * 3 + yy + t * 7) % 200 + rng.integers(0, 40, (height, width))
        img[(t * 3) % height] = 250
        clip[t] = img
    return clip


def make_video(
    path: Path,
    *,
    n_frames: int = 60,
    width: int = 64,
    height: int = 48,
    codec: str = "libx264",
    gop: int | None = None,
    b_frames: int | None = None,
    options: dict[str, str] | None = None,
    container_format: str | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Write a synthetic gray video with PyAV."""
    with av.open(
        str(path), "w", format=container_format, options=container_options or {}
    ) as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        if b_frames is not None:
            stream.codec_context.max_b_frames = b_frames
        if options:
            stream.options = options
        for img in _gray_clip(n_frames, height, width):
            frame = av.VideoFrame.from_ndarray(img, format="gray").reformat(format="yuv420p")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def plain_decode(path: Path) -> list[np.ndarray]:
    """Every frame of a plain PyAV decode, as luma."""
    with av.open(str(path)) as container:
        return [luma_of_frame(f) for f in container.decode(video=0)]


def plain_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


# ---- synthetic videos ---------------------------------------------------------------------

SYNTHETIC_CASES = {
    # name: make_video kwargs
    "mp4_bframes": {"n_frames": 90},  # libx264 defaults: B-frames, one key frame
    "mp4_gop1": {"n_frames": 40, "gop": 1},
    "mp4_gop10": {"n_frames": 90, "gop": 10},
    "mp4_single_key": {"n_frames": 90, "options": {"keyint": "10000", "scenecut": "0"}},
    "mp4_one_frame": {"n_frames": 1},
    "mkv_gop10": {"n_frames": 60, "gop": 10, "container_format": "matroska"},
    "avi_h264_bframes": {"n_frames": 60, "gop": 10, "container_format": "avi"},
    "avi_mpeg4_bframes": {
        "n_frames": 60,
        "codec": "mpeg4",
        "gop": 12,
        "b_frames": 2,
        "container_format": "avi",
    },
    "mpeg_ps_mpeg2": {
        "n_frames": 60,
        "codec": "mpeg2video",
        "gop": 12,
        "b_frames": 2,
        "container_format": "mpeg",
    },
    "raw_h264": {"n_frames": 30, "container_format": "h264"},
}


SUFFIXES = {None: "mp4", "matroska": "mkv", "avi": "avi", "mpeg": "mpg", "h264": "h264"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    return {
        name: make_video(folder / f"{name}.{SUFFIXES[kwargs.get('container_format')]}", **kwargs)
        for name, kwargs in SYNTHETIC_CASES.items()
    }


def _assert_sampling_matches(path: Path, rng: np.random.Generator) -> None:
    reference = plain_decode(path)
    with VideoReader(path) as reader:
        n = reader.info.n_frames
        assert n == len(reference)
        everything = list(reader.frames())
        assert [i for i, _ in everything] == list(range(n))
        assert everything[0][1].shape == (reader.info.height, reader.info.width)
        for i, frame in everything:
            np.testing.assert_array_equal(frame, reference[i])
        picks = [
            [0],
            [n - 1],
            np.linspace(0, n - 1, min(n, 7)).round().astype(int).tolist(),
            rng.integers(0, n, size=min(n, 9)).tolist(),
            [n - 1, 0, n // 2, n // 2],  # unsorted, duplicated: sorted unique out
        ]
        for indices in picks:
            got = list(reader.frames(indices))
            assert [i for i, _ in got] == sorted(set(indices))
            for i, frame in got:
                assert frame.dtype == np.uint8
                np.testing.assert_array_equal(frame, reference[i])
        assert reader.warnings == []


@pytest.mark.parametrize("name", list(SYNTHETIC_CASES))
def test_synthetic_counts_and_sampling(synthetic: dict[str, Path], name: str) -> None:
    path = synthetic[name]
    with VideoReader(path) as reader:
        assert reader.info.n_frames == plain_count(path) == SYNTHETIC_CASES[name]["n_frames"]
        assert (reader.info.width, reader.info.height) == (64, 48)
    _assert_sampling_matches(path, np.random.default_rng(0))


@pytest.mark.parametrize(("name", "fast"), [("mp4_bframes", True), ("avi_h264_bframes", False)])
def test_fast_path_rule(synthetic: dict[str, Path], name: str, fast: bool) -> None:
    with VideoReader(synthetic[name]) as reader:
        assert reader._fast is fast


def test_arrays_stay_valid_after_decoding_continues(synthetic: dict[str, Path]) -> None:
    path = synthetic["mp4_gop10"]
    reference = plain_decode(path)
    with VideoReader(path) as reader:
        kept = list(reader.frames())
        list(reader.frames([0, 5, 50]))  # decode more: recycled buffers must not leak in
    for i, frame in kept:
        assert frame.flags.owndata or frame.base is not None
        np.testing.assert_array_equal(frame, reference[i])
    assert len({f.tobytes() for _, f in kept}) == len(kept)


def test_luma_is_the_stored_plane(synthetic: dict[str, Path]) -> None:
    """Luma plane as stored: equal to swscale gray up to the 16-235 -> 0-255 range map."""
    with av.open(str(synthetic["mp4_gop1"])) as container:
        frame = next(container.decode(video=0))
        luma = luma_of_frame(frame).astype(np.float64)
        gray = frame.to_ndarray(format="gray").astype(np.float64)
    stretched = np.clip((luma - 16) * 255 / 219, 0, 255)
    assert np.abs(stretched - gray).max() <= 2


def test_threads_give_the_same_frames(synthetic: dict[str, Path]) -> None:
    path = synthetic["mp4_gop10"]
    with VideoReader(path) as one, VideoReader(path, threads=4) as four:
        for (i, a), (j, b) in zip(one.frames([3, 40, 89]), four.frames([3, 40, 89]), strict=True):
            assert i == j
            np.testing.assert_array_equal(a, b)


def test_out_of_range_index(synthetic: dict[str, Path]) -> None:
    with VideoReader(synthetic["mp4_gop10"]) as reader, pytest.raises(IndexError):
        list(reader.frames([90]))


# ---- real samples -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "n_frames"), list(REAL_FILES.items()))
def test_real_sample_counts(name: str, n_frames: int) -> None:
    path = _real(name)
    with VideoReader(path) as reader:
        assert reader.info.n_frames == plain_count(path) == n_frames
        shapes = {f.shape for _, f in reader.frames()}
        assert shapes == {(reader.info.height, reader.info.width)}
        assert reader.info.fps > 0


@pytest.mark.parametrize("name", SAMPLED_REAL)
def test_real_sample_sampling(name: str) -> None:
    _assert_sampling_matches(_real(name), np.random.default_rng(1))


# ---- broken videos ------------------------------------------------------------------------


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for k in range(20):
            samples = np.zeros((1, 1024), np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, k * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def test_error_cases(tmp_path: Path) -> None:
    cases: list[tuple[Path, str]] = [
        (tmp_path / "missing.mp4", "missing_file"),
        (tmp_path / "empty.mp4", "empty_file"),
        (tmp_path / "text.mp4", "not_video"),
        (_audio_only(tmp_path / "audio.m4a"), "no_video_stream"),
    ]
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    # moov at the end: cut in half, the index is gone and nothing can be read.
    whole = make_video(tmp_path / "whole.mp4", n_frames=60).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    cases.append((tmp_path / "cut.mp4", "truncated"))
    for path, kind in cases:
        with pytest.raises(VideoError) as caught:
            VideoReader(path)
        assert caught.value.kind == kind, path.name


def test_frame_too_large(tmp_path: Path) -> None:
    path = make_video(tmp_path / "v.mp4", n_frames=3)
    with pytest.raises(VideoError) as caught:
        VideoReader(path, max_frame_pixels=64 * 48 - 1)
    assert caught.value.kind == "frame_too_large"


def test_truncated_faststart_keeps_readable_frames(tmp_path: Path) -> None:
    """moov first: the first half of the packets survive; they decode, with a warning."""
    source = make_video(
        tmp_path / "fs.mp4",
        n_frames=120,
        width=96,
        height=64,
        gop=15,
        container_options={"movflags": "faststart"},
    )
    data = source.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with VideoReader(cut) as reader:
        got = list(reader.frames())
        assert 0 < len(got) <= reader.info.n_frames < 120
        assert any("truncated" in w for w in reader.warnings)


def test_garbage_mid_stream_still_yields_frames(tmp_path: Path) -> None:
    path = make_video(tmp_path / "v.mp4", n_frames=150, width=160, height=120, gop=30)
    data = bytearray(path.read_bytes())
    start, end = data.find(b"mdat") + 8, data.find(b"moov")
    middle = (start + end) // 2
    data[middle : middle + 3000] = (
        np.random.default_rng(2).integers(0, 256, 3000).astype(np.uint8).tobytes()
    )
    path.write_bytes(bytes(data))
    with VideoReader(path) as reader:
        got = list(reader.frames())
        assert 0 < len(got) < reader.info.n_frames == 150
        assert any("packets could not be decoded" in w for w in reader.warnings)
        indices = [i for i, _ in got]
        assert indices == sorted(indices)


# ---- DICOM --------------------------------------------------------------------------------


def make_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    transfer_syntax: str | None = None,
    frame_time_ms: float | None = 40.0,
) -> Path:
    """Write a DICOM: ``pixels`` (F, H, W) / (F, H, W, 3) or (H, W) for a single frame."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax or ExplicitVRLittleEndian)
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # US multi-frame
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID = "PAT-001"
    ds.StudyInstanceUID = "1.2.3.4.5"
    ds.Modality = "US"
    if frame_time_ms is not None:
        ds.FrameTime = frame_time_ms
    if pixels is not None:
        colour = photometric == "RGB"
        multi = pixels.ndim == (4 if colour else 3)
        if multi:
            ds.NumberOfFrames = pixels.shape[0]
        ds.Rows, ds.Columns = pixels.shape[1:3] if multi else pixels.shape[:2]
        ds.SamplesPerPixel = 3 if colour else 1
        if colour:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        bits = pixels.dtype.itemsize * 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
        ds.PixelRepresentation = 0
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"] * max(1, len(pixels)))
        else:
            ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _dicom_frames(path: Path) -> tuple[VideoReader, list[np.ndarray]]:
    reader = VideoReader(path)
    return reader, [f for _, f in reader.frames()]


def test_dicom_8bit_clip(tmp_path: Path) -> None:
    clip = _gray_clip(5, 48, 64)
    reader, frames = _dicom_frames(make_dicom(tmp_path / "a.bin", clip))
    info = reader.info
    assert (info.n_frames, info.width, info.height, info.codec) == (5, 64, 48, "dicom")
    assert (info.patient_id, info.study_id, info.fps) == ("PAT-001", "1.2.3.4.5", 25.0)
    np.testing.assert_array_equal(np.stack(frames), clip)
    assert [i for i, _ in reader.frames([4, 1])] == [1, 4]


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        # (center, width) of the VOI window; expected 8-bit value of raw 1000, 2000, 3000
        (None, [0, 128, 255]),  # min-max over the clip
        ((2000.0, 1001.0), [0, 128, 255]),  # window 1500..2500: 2000 sits in the middle
        ((1000.0, 2001.0), [128, 255, 255]),  # window 0..2000
    ],
)
def test_dicom_16bit_scaling(
    tmp_path: Path, window: tuple[float, float] | None, expected: list[int]
) -> None:
    clip = np.zeros((3, 4, 4), np.uint16)
    clip[0], clip[1], clip[2] = 1000, 2000, 3000
    _, frames = _dicom_frames(make_dicom(tmp_path / "d.dcm", clip, window=window))
    assert [int(f[0, 0]) for f in frames] == pytest.approx(expected, abs=1)
    assert all(f.dtype == np.uint8 for f in frames)


def test_dicom_monochrome1_rgb_and_single_frame(tmp_path: Path) -> None:
    clip = _gray_clip(2, 8, 8)
    _, inverted = _dicom_frames(make_dicom(tmp_path / "m1.dcm", clip, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(np.stack(inverted), 255 - clip)

    rgb = np.zeros((2, 8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0
    reader, frames = _dicom_frames(make_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    assert reader.info.n_frames == 2
    assert int(frames[0][0, 0]) == pytest.approx(0.299 * 255 + 0.587 * 128, abs=2)

    reader, frames = _dicom_frames(make_dicom(tmp_path / "one.dcm", clip[0]))
    assert reader.info.n_frames == 1
    np.testing.assert_array_equal(frames[0], clip[0])


def test_dicom_detected_by_magic_not_extension(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "clip.mp4", _gray_clip(2, 8, 8))
    with VideoReader(path) as reader:
        assert reader.info.codec == "dicom"


def test_dicom_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.uid import MPEG4HP41, JPEGLSLossless

    with pytest.raises(VideoError) as caught:
        VideoReader(make_dicom(tmp_path / "nopix.dcm", None))
    assert caught.value.kind == "no_pixel_data"

    # H.264 in DICOM: no pixel-data decoder in pydicom
    path = make_dicom(tmp_path / "h264.dcm", _gray_clip(2, 8, 8), transfer_syntax=MPEG4HP41)
    with pytest.raises(VideoError) as caught:
        VideoReader(path)
    assert caught.value.kind == "unsupported_dicom" and "MPEG-4" in caught.value.message

    class Missing:  # what pydicom reports where the syntax's plugin is not installed
        is_available = False
        missing_dependencies = ("pyjpegls - requires numpy and pyjpegls",)

    monkeypatch.setattr("pydicom.pixels.get_decoder", lambda syntax: Missing())
    path = make_dicom(tmp_path / "ls.dcm", _gray_clip(2, 8, 8), transfer_syntax=JPEGLSLossless)
    with pytest.raises(VideoError) as caught:
        VideoReader(path)
    assert caught.value.kind == "unsupported_dicom"
    assert "JPEG-LS Lossless" in caught.value.message and "pyjpegls" in caught.value.message
    monkeypatch.undo()

    with pytest.raises(VideoError) as caught:
        VideoReader(make_dicom(tmp_path / "big.dcm", _gray_clip(2, 48, 64)), max_frame_pixels=100)
    assert caught.value.kind == "frame_too_large"
