import json
import logging
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from ingest_inputs import clip_frames, write_dicom, write_mp4

from usv_ray.config import Config, ConfigError, IngestConfig, PrivacyConfig, RayConfig
from usv_ray.ingest.decode import VideoError
from usv_ray.ingest.manifest import VideoTask
from usv_ray.ingest.pipeline import run_ingest
from usv_ray.ingest.video import ingest_video, sample_indices

RAW_IDS = ("MRN4242", "MRN5151", "MRN6161", "Doe^Jane", "MRN7000")


@pytest.mark.parametrize(
    ("mode", "n_frames", "cap", "expected"),
    [
        ("all", 5, 30, [0, 1, 2, 3, 4]),
        ("variable", 5, 30, [0, 1, 2, 3, 4]),  # short videos keep every frame
        ("variable", 100, 4, [0, 33, 66, 99]),
        ("equal", 100, 4, [0, 33, 66, 99]),
        ("variable", 1, 30, [0]),
        ("variable", 31, 30, list(range(0, 15)) + list(range(16, 31))),
    ],
)
def test_sample_indices(mode, n_frames, cap, expected):
    indices = sample_indices(n_frames, IngestConfig(sampling=mode, n_frames=cap))
    assert indices == expected


def test_equal_sampling_rejects_short_videos():
    with pytest.raises(VideoError, match="fewer than the 12"):
        sample_indices(5, IngestConfig(sampling="equal", n_frames=12))


def _annotations(path: Path, last_frame: int) -> Path:
    data = {
        "tracklets": [
            {
                "tracklet_id": "MRN4242-t1",  # a careless ID that holds the patient ID
                "nodule_id": "MRN4242-n1",
                "keyframes": [
                    {"frame": 0, "box": [10, 20, 40, 50]},
                    {"frame": last_frame, "box": [20, 25, 60, 60]},
                ],
            },
            {
                "tracklet_id": "t2",
                "nodule_id": None,
                "keyframes": [
                    {"frame": 2, "box": [0, 0, 30, 30]},
                    {"frame": 9999, "box": [0, 0, 5, 5]},
                ],
            },
        ]
    }
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def archive(tmp_path):
    """A manifest with good videos and every kind of bad input ingest must survive."""
    v = tmp_path / "videos"
    write_mp4(v / "MRN4242_good.mp4", clip_frames(40, 96, 72))
    write_mp4(v / "one_frame.mp4", clip_frames(1, 64, 48))
    write_mp4(v / "long.mp4", clip_frames(120, 64, 48, seed=3), gop=30)
    write_dicom(v / "cine.dcm", clip_frames(12, 64, 48), patient_id="MRN7000")
    write_dicom(v / "nopixels.dcm", None, patient_id="MRN6161")
    (v / "empty.mp4").write_bytes(b"")
    (v / "notes.mp4").write_text("this is a referral letter, not a video\n" * 20)
    whole = (v / "long.mp4").read_bytes()
    (v / "truncated.mp4").write_bytes(whole[:200])
    corrupt = bytearray(whole)
    middle = len(corrupt) // 2
    corrupt[middle : middle + 2000] = (
        np.random.default_rng(1).integers(0, 256, 2000, np.uint8).tobytes()
    )
    (v / "corrupt_middle.mp4").write_bytes(bytes(corrupt))
    with av.open(str(v / "audio_only.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 8000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    write_mp4(v / "huge.mp4", clip_frames(2, 512, 384))
    write_mp4(v / "label_typo.mp4", clip_frames(3, 64, 48))
    _annotations(tmp_path / "good.json", last_frame=30)
    (tmp_path / "broken.json").write_text("{")
    rows = [
        "video,patient_id,study_id,label,annotations",
        "videos/MRN4242_good.mp4,MRN4242,2024-05-01,malignant,good.json",
        "videos/one_frame.mp4,MRN5151,2024-05-01,benign,broken.json",
        "videos/long.mp4,MRN5151,2024-06-01,0,",
        "videos/cine.dcm,,2024-05-01,1,",
        "videos/nopixels.dcm,,,benign,",
        "videos/empty.mp4,MRN5151,,benign,",
        "videos/notes.mp4,MRN5151,,benign,",
        "videos/truncated.mp4,MRN5151,,benign,",
        "videos/corrupt_middle.mp4,MRN5151,,benign,",
        "videos/audio_only.mp4,MRN5151,,benign,",
        "videos/huge.mp4,MRN5151,,benign,",
        "videos/missing.mp4,MRN5151,,benign,",
        "videos/long.mp4,MRN5151,2024-06-01,0,",
        "videos/label_typo.mp4,MRN5151,,malignnat,",
    ]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def _config(**ingest) -> Config:
    settings = {"crop_box": (0.0, 0.11, 1.0, 1.0), "n_frames": 8, "tracklet_frames": 4}
    settings["max_frame_pixels"] = 100_000  # 512 x 384 is "huge" here
    settings.update(ingest)
    return Config(
        ray=RayConfig(progress=False),
        privacy=PrivacyConfig(dev_key=True),
        ingest=IngestConfig(**settings),
    )


def _status(videos) -> dict[str, str]:
    return {
        row["source"].split("/")[-1]: (row["error"] or "ok").split(":")[0]
        for row in videos.to_pylist()
    }


def _files_and_strings(out: Path) -> str:
    """Every file name, every string cell of every table, every journal byte under ``out``."""
    chunks = []
    for path in out.rglob("*"):
        chunks.append(str(path.relative_to(out)))
        if path.suffix == ".parquet":
            for column in pq.read_table(path).columns:
                if column.type in ("string",) or str(column.type) in (
                    "string",
                    "list<item: int32>",
                ):
                    chunks.extend(map(str, column.to_pylist()))
        elif path.is_file():
            chunks.append(path.read_text())
    return "\n".join(chunks)


@pytest.mark.ray
@pytest.mark.slow
def test_ingest_survives_every_bad_input(ray_session, archive, tmp_path, caplog):
    out = tmp_path / "data"
    with caplog.at_level(logging.DEBUG, logger="usv_ray"):
        summary = run_ingest(_config(), archive, out)
    videos = pq.read_table(out / "videos.parquet")
    status = _status(videos)
    assert status == {
        "<patient>_good.mp4": "ok",
        "one_frame.mp4": "ok",
        "long.mp4": "ok",
        "cine.dcm": "ok",
        "nopixels.dcm": "no_pixel_data",
        "empty.mp4": "empty_file",
        "notes.mp4": "not_video",
        "truncated.mp4": status["truncated.mp4"],
        "corrupt_middle.mp4": "ok",
        "audio_only.mp4": "no_video_stream",
        "huge.mp4": "frame_too_large",
        "missing.mp4": "missing_file",
        "label_typo.mp4": "bad_label",
    }
    assert status["truncated.mp4"] in {"truncated", "not_video", "decode_error"}
    assert summary.ok == 5 and summary.videos == 13
    assert (summary.decoded_now, summary.failed_now, summary.skipped) == (5, 8, 0)
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    kinds = sorted(e["kind"] for e in errors)
    for kind in ("duplicate_row", "bad_annotations", "missing_file", "bad_label", "not_video"):
        assert kind in kinds
    assert sum(e["kind"] == "duplicate_row" for e in errors) == 1
    assert any(e["kind"] == "bad_annotations" and "9999" in e["message"] for e in errors)

    rows = {r["source"].split("/")[-1]: r for r in videos.to_pylist()}
    frames = pq.read_table(out / "frames" / f"{rows['<patient>_good.mp4']['video_id']}.parquet")
    assert frames.num_rows == 8 and frames["seq_len"].to_pylist() == [8] * 8
    assert frames["seq_index"].to_pylist() == list(range(8))
    assert frames["frame_index"].to_pylist() == sample_indices(40, _config().ingest)
    image = np.frombuffer(frames["image"][0].as_py(), np.uint8).reshape(224, 224)
    assert image.max() < 200  # the white text band was cropped before storing
    one = pq.read_table(out / "frames" / f"{rows['one_frame.mp4']['video_id']}.parquet")
    assert one.num_rows == 1 and one["seq_len"].to_pylist() == [1]
    assert rows["cine.dcm"]["patient_key"] and rows["cine.dcm"]["codec"] == "dicom"
    assert rows["long.mp4"]["n_frames"] == 120 and rows["long.mp4"]["label"] == 0

    tracklets = pq.read_table(
        out / "tracklets" / f"{rows['<patient>_good.mp4']['video_id']}.parquet"
    )
    assert tracklets.num_rows == 1  # the tracklet past the end of the video was skipped
    t = tracklets.to_pylist()[0]
    assert t["frame_index"] == [0, 10, 20, 30] and t["n_frames_total"] == 31
    assert (
        len(t["clip"]) == 4 * 256 * 128
        and t["patient_key"] == rows["<patient>_good.mp4"]["patient_key"]
    )

    everything = _files_and_strings(out) + caplog.text
    for raw in RAW_IDS:
        assert raw not in everything, f"{raw} leaked into the output"


@pytest.mark.ray
@pytest.mark.slow
def test_rerun_skips_finished_work_and_recovers_from_a_crash(ray_session, archive, tmp_path):
    out = tmp_path / "data"
    run_ingest(_config(), archive, out)
    videos_bytes = (out / "videos.parquet").read_bytes()
    errors_bytes = (out / "errors.parquet").read_bytes()

    again = run_ingest(_config(), archive, out)
    assert (again.decoded_now, again.failed_now, again.skipped) == (0, 0, 13)
    assert (out / "videos.parquet").read_bytes() == videos_bytes
    assert (out / "errors.parquet").read_bytes() == errors_bytes

    # a crash: one video's journal entry never written, a half-written shard left behind
    video_id = next(
        r["video_id"]
        for r in pq.read_table(out / "videos.parquet").to_pylist()
        if r["status"] == "ok"
    )
    (out / "journal" / f"{video_id}.json").unlink()
    shard = out / "frames" / f"{video_id}.parquet"
    if shard.exists():
        shutil.copy(shard, out / "frames" / f"{video_id}.parquet.tmp-deadbeef")
    resumed = run_ingest(_config(), archive, out)
    assert (resumed.decoded_now, resumed.skipped, resumed.repaired) == (1, 12, 0)
    assert not list(out.rglob("*.tmp-*"))
    assert (out / "videos.parquet").read_bytes() == videos_bytes

    # other frame settings are refused rather than mixing two samplings in one folder...
    with pytest.raises(ConfigError, match=r"ingest\.n_frames=4 \(the folder has 8\)"):
        run_ingest(_config(n_frames=4), archive, out)
    assert (out / "videos.parquet").read_bytes() == videos_bytes
    # ...and go to a folder of their own, where every video is redone
    changed = run_ingest(_config(n_frames=4), archive, tmp_path / "data4")
    assert (changed.decoded_now, changed.failed_now, changed.skipped) == (5, 8, 0)


@pytest.mark.ray
@pytest.mark.slow
def test_real_clips_frame_counts_match_pyav(ray_session, tmp_path):
    samples = Path(__file__).resolve().parents[3] / "shared" / "real_samples"
    if not samples.is_dir():
        pytest.skip("../shared/real_samples is not beside this checkout")
    clips = sorted(
        p for p in samples.iterdir() if p.suffix in {".gif", ".mov", ".mp4", ".avi", ".mpeg"}
    )
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "video,patient_id,label\n" + "".join(f"{p},P{i},\n" for i, p in enumerate(clips))
    )
    out = tmp_path / "data"
    summary = run_ingest(
        _config(sampling="all", crop_box=(0.0, 0.0, 1.0, 1.0), max_frame_pixels=10**7),
        manifest,
        out,
    )
    assert summary.ok == len(clips) == 9
    for row in pq.read_table(out / "videos.parquet").to_pylist():
        path = samples / row["source"].split("/")[-1]
        with av.open(str(path)) as container:
            expected = sum(1 for _ in container.decode(video=0))
        frames = pq.read_table(
            out / "frames" / f"{row['video_id']}.parquet", columns=["frame_index"]
        )
        assert row["n_frames"] == expected == frames.num_rows, path.name
        assert frames["frame_index"].to_pylist() == list(range(expected))


def test_huge_frames_are_shrunk_not_a_crash(tmp_path):
    path = write_mp4(tmp_path / "uhd.mp4", clip_frames(2, 3840, 2160))
    task = VideoTask("vid", "uhd.mp4", str(path), "pk", None, None, 1, None, "fp")
    entry = ingest_video(task, IngestConfig(crop_box=(0.0, 0.11, 1.0, 1.0)), b"k" * 16, tmp_path)
    assert entry["video"]["status"] == "ok" and entry["video"]["width"] == 3840
    frames = pq.read_table(tmp_path / "frames" / "vid.parquet")
    assert frames.num_rows == 2 and set(frames["height"].to_pylist()) == {224}
