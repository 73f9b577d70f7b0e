"""The night's worst night, on a small archive: a wrong key, damaged and missing shards, two
runs in one folder, a run killed midway, a Ray that does not start, and summaries that
count what happened. Each case is what an operator would meet; docs/operations.md says
what they see and what to do.

The stages run in this process (``workers: 0``): no Ray, so each case costs seconds. The
archive is ingested once; a test that damages a folder works on its own copy.
"""

import csv
import logging
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
from toy_bundle import write_toy_bundle, write_toy_reid_bundle

from usv_ray.cli import main
from usv_ray.config import SynthConfig, load_config
from usv_ray.index.pipeline import run_index
from usv_ray.ingest.pipeline import run_ingest
from usv_ray.layout import FolderBusy, IngestFolder, PredictFolder, hold
from usv_ray.predict.pipeline import run_predict
from usv_ray.privacy import SECRET_ENV, KeyMismatchError
from usv_ray.synth import write_archive

SETTINGS = [
    "privacy.dev_key=true",
    "ingest.frame_size=32",
    "ingest.n_frames=6",
    "ingest.tracklet_frames=4",
    "ingest.patch_height=16",
    "ingest.patch_width=8",
    "ingest.workers=0",
    "predict.workers=0",
    "predict.batch_size=2",
    "predict.commit_every=2",
    "index.workers=0",
    "index.tau=0.3",
]
CFG = load_config(None, SETTINGS)
ARCHIVE = SynthConfig(
    patients=4, seed=11, width=128, height=96, min_frames=4, max_frames=12, workers=1,
    dicom_fraction=0.0, night_followups=0.5, night_new_patients=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """The archive ingested (13 videos, all annotated), its night manifest with a row of a
    file that is not there, and a diagnosis and a re-ID bundle made for the folder."""
    root = tmp_path_factory.mktemp("faults")
    manifest = write_archive(ARCHIVE, root / "archive")
    tonight = root / "archive" / "night" / "manifest.csv"
    with tonight.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows.append({**rows[0], "video": "videos/not_there.mp4"})
    with tonight.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run_ingest(CFG, manifest, root / "data")
    patches = CFG.ingest
    return {
        "root": root,
        "manifest": manifest,
        "tonight": tonight,
        "data": root / "data",
        "diagnosis": write_toy_bundle(root / "classify", ingest=patches),
        "reid": write_toy_reid_bundle(root / "reid", clip=(4, 16, 8), patches=patches),
    }


@pytest.fixture
def data(night, tmp_path) -> Path:
    """This test's own copy of the ingested folder (times kept: nothing looks changed)."""
    return Path(shutil.copytree(night["data"], tmp_path / "data"))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _with_tracklets(data: Path) -> str:
    """A video of the folder that has tracklets."""
    return sorted(p.stem for p in (data / "tracklets").glob("*.parquet"))[0]


# ------------------------------------------------------------------------------ keys


def test_another_key_is_refused_in_one_line_before_any_video_is_read(
    night, data, monkeypatch, capsys
):
    before = _files(data)
    monkeypatch.setenv(SECRET_ENV, "another hospital's key, 32 bytes")
    with pytest.raises(KeyMismatchError, match=r"keyed with the development key.*new --out"):
        run_ingest(CFG, night["tonight"], data)
    assert _files(data) == before  # no video added, no keying record changed

    argv = ["ingest", "--manifest", str(night["tonight"]), "--out", str(data)]
    assert main([*argv, *(f"--set={s}" for s in SETTINGS)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("usv-ray: error: ") and "keyed with" in err[0]
    assert _files(data) == before


def test_another_private_key_is_refused_and_the_right_one_goes_on(night, tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv(SECRET_ENV, "the hospital's key of 32 bytes..")
    run_ingest(CFG, night["tonight"], data)
    monkeypatch.setenv(SECRET_ENV, "a mistyped key of 32 bytes......")
    with pytest.raises(KeyMismatchError, match="another private key"):
        run_ingest(CFG, night["tonight"], data)
    monkeypatch.setenv(SECRET_ENV, "the hospital's key of 32 bytes..")
    assert run_ingest(CFG, night["tonight"], data).skipped == 7
    assert "32 bytes" not in (data / "keying.json").read_text()  # never the key


# ------------------------------------------------------------------------------ integrity


def _flip(path: Path, offset: int, n: int = 64) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + n] = bytes(b ^ 0xFF for b in raw[offset : offset + n])
    path.write_bytes(bytes(raw))


def _clip_chunk(path: Path) -> tuple[int, int]:
    """(where the clip column's first page starts, its compressed size) in a shard."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(
        meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == "clip"
    )
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    return start, chunk.total_compressed_size


@pytest.mark.parametrize("where", ["clip data", "page header"])
def test_a_damaged_tracklets_shard_is_an_error_row_and_the_next_ingest_repairs_it(
    night, data, tmp_path, where
):
    video_id = _with_tracklets(data)
    shard = IngestFolder(data).tracklets(video_id)
    n_tracklets = pq.read_table(shard).num_rows
    all_tracklets = pq.read_table(data / "tracklets").num_rows
    start, size = _clip_chunk(shard)
    _flip(shard, start + size // 2 if where == "clip data" else start, 64 if size > 128 else 8)

    s = run_index(CFG, data, night["reid"], tmp_path / "index")
    errors = pq.read_table(tmp_path / "index" / "errors.parquet").to_pandas()
    damaged = errors[errors["kind"] == "damaged_shard"]
    assert set(damaged["video_id"]) == {video_id} and set(damaged["stage"]) == {"index"}
    assert damaged["message"].str.contains(video_id).all()
    assert s.damaged == len(damaged) > 0 and "run `usv-ray ingest` again" in s.text()
    assert s.tracklets == all_tracklets - n_tracklets  # the rest of the night went on

    repaired = run_ingest(CFG, night["manifest"], data)
    assert (repaired.repaired, repaired.decoded_now, repaired.skipped) == (1, 1, 12)
    again = run_index(CFG, data, night["reid"], tmp_path / "index")
    assert again.damaged == 0 and again.tracklets == all_tracklets
    assert again.embedded_now == n_tracklets


def test_a_damaged_frames_shard_is_an_error_row_naming_the_video(night, data, tmp_path):
    video_id = sorted(p.stem for p in (data / "frames").glob("*.parquet"))[0]
    _flip(IngestFolder(data).frames(video_id), 200)
    s = run_predict(CFG, night["diagnosis"], data, tmp_path / "predict")
    rows = pq.read_table(tmp_path / "predict" / "diagnoses.parquet").to_pandas()
    bad = rows.set_index("video_id").loc[video_id]
    assert bad["status"] == "error" and "damaged" in bad["error"]
    assert (s.diagnosed, s.failed, s.not_ingested) == (12, 1, 0)


def test_a_lost_frames_shard_of_a_diagnosed_video_is_noticed_and_restored(night, data, tmp_path):
    out = tmp_path / "predict"
    run_predict(CFG, night["diagnosis"], data, out)
    video_id = sorted(p.stem for p in (data / "frames").glob("*.parquet"))[3]
    IngestFolder(data).frames(video_id).unlink()
    s = run_predict(CFG, night["diagnosis"], data, out)
    assert s.lost_shards == 1 and "ingest their manifest again" in s.text()
    assert run_ingest(CFG, night["manifest"], data).repaired == 1
    assert run_predict(CFG, night["diagnosis"], data, out).lost_shards == 0


def test_a_training_stage_refuses_damaged_shards_naming_them(data):
    from usv_ray.layout import DamagedDataError

    video_id = sorted(p.stem for p in (data / "frames").glob("*.parquet"))[0]
    _flip(IngestFolder(data).frames(video_id), 200)
    videos = IngestFolder(data).read_videos(["video_id"])["video_id"]
    with pytest.raises(DamagedDataError, match=rf"1 shards .*{video_id}: its frames shard is"):
        IngestFolder(data).frame_shards(videos)


# ------------------------------------------------------------------------------ one run per folder


def test_a_second_run_in_a_held_folder_is_refused_in_one_line(night, data, tmp_path):
    out = tmp_path / "index"
    with hold(out, "index"):
        with pytest.raises(FolderBusy, match=r"in use by a usv-ray index run \(pid \d+"):
            run_index(CFG, data, night["reid"], out)
        with pytest.raises(FolderBusy, match=r"lock\.busy=wait"):
            run_ingest(CFG, night["manifest"], out)
    # two ingests of one manifest
    with hold(data, "ingest"), pytest.raises(FolderBusy, match="a usv-ray ingest run"):
        run_ingest(CFG, night["manifest"], data)
    assert not list(data.glob(".usv-ray.lock"))


def test_a_second_run_set_to_wait_starts_when_the_first_ends(night, data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="usv_ray.layout.claim")
    out, held = tmp_path / "index", threading.Event()

    def first_run():
        with hold(out, "index"):
            held.set()
            time.sleep(2.0)

    thread = threading.Thread(target=first_run)
    thread.start()
    held.wait(10)
    waiting = load_config(None, [*SETTINGS, "lock.busy=wait", "lock.wait_s=60"])
    started = time.monotonic()
    s = run_index(waiting, data, night["reid"], out)
    thread.join()
    assert time.monotonic() - started > 1.0 and s.nodules > 0
    assert "waiting for it (lock.busy=wait)" in caplog.text


# ------------------------------------------------------------------------------ work kept


def _predict_killed(night, data: Path, out: Path) -> int:
    """Run predict in a process that is killed (SIGKILL) once it has committed a part;
    returns how many videos that part holds."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from usv_ray.config import load_config
        from usv_ray.predict import diagnose
        from usv_ray.predict.pipeline import run_predict

        real = diagnose.Diagnoser.__call__

        def slow(self, batch):  # a long night: each batch takes a while
            time.sleep(1.0)
            return real(self, batch)

        diagnose.Diagnoser.__call__ = slow
        run_predict(load_config(None, {SETTINGS!r}), sys.argv[1], sys.argv[2], sys.argv[3])
        """
    )
    args = [sys.executable, "-c", script, str(night["diagnosis"]), str(data), str(out)]
    process = subprocess.Popen(args)
    parts = PredictFolder(out).parts_root
    deadline = time.monotonic() + 180
    while not list(parts.glob("*/part-*.parquet")) and process.poll() is None:
        assert time.monotonic() < deadline, "predict committed nothing in 180 s"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = list(parts.glob("*/part-*.parquet"))
    assert committed, "the run ended before it could be killed"
    return sum(pq.read_table(p, columns=["video_id"]).num_rows for p in committed)


def _same_tables(a: Path, b: Path, name: str, stamp: str) -> None:
    """``name`` in two folders holds the same rows but for the time stamp column (floats,
    and lists of them, to float precision: batches of other sizes sum in other orders)."""
    left = pq.read_table(a / name).to_pandas().drop(columns=stamp)
    right = pq.read_table(b / name).to_pandas().drop(columns=stamp)
    assert list(left.columns) == list(right.columns) and len(left) == len(right)
    for column in left.columns:
        for x, y in zip(left[column], right[column], strict=True):
            values = np.asarray(x) if x is not None else None
            if values is not None and values.dtype.kind == "f":
                np.testing.assert_allclose(values, y, rtol=1e-5, atol=1e-6, err_msg=column)
            elif values is not None and values.dtype.kind == "O" and values.ndim:
                assert list(x) == list(y), column
            else:
                assert x == y or (pd.isna(x) and pd.isna(y)), column


def test_predict_killed_midway_keeps_its_parts_and_ends_as_an_uninterrupted_run(
    night, data, tmp_path, caplog
):
    caplog.set_level(logging.WARNING, logger="usv_ray.layout.claim")
    whole = tmp_path / "whole"
    run_predict(CFG, night["diagnosis"], data, whole)
    out = tmp_path / "killed"
    committed = _predict_killed(night, data, out)
    assert (out / ".usv-ray.lock").exists()  # left by the killed run

    s = run_predict(CFG, night["diagnosis"], data, out)
    assert "taking over the lock of a predict run that is gone" in caplog.text
    assert s.resumed == committed > 0 and s.diagnosed == 13 - committed
    assert not (out / "parts").exists()  # merged
    _same_tables(whole, out, "diagnoses.parquet", "diagnosed_at")
    _same_tables(whole, out, "tracklet_diagnoses.parquet", "diagnosed_at")


def test_the_index_stopped_midway_redoes_only_what_it_had_not_embedded(
    night, data, tmp_path, monkeypatch
):
    from usv_ray.bundle.reid import ShardEmbedder

    whole = tmp_path / "whole"
    run_index(CFG, data, night["reid"], whole)

    real, calls = ShardEmbedder.__call__, []

    def dies_on_the_second_batch(self, batch):
        calls.append(len(batch["shard"]))
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a kill does, as far as the folder can tell
        return real(self, batch)

    out = tmp_path / "stopped"
    monkeypatch.setattr(ShardEmbedder, "__call__", dies_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run_index(CFG, data, night["reid"], out)
    monkeypatch.setattr(ShardEmbedder, "__call__", real)
    kept = pq.read_table(out / "embeddings").num_rows
    assert kept > 0

    s = run_index(CFG, data, night["reid"], out)
    assert s.embedded_now == pq.read_table(data / "tracklets").num_rows - kept
    _same_tables(whole, out, "nodules.parquet", "updated_at")


# ------------------------------------------------------------------------------ Ray start-up


def test_a_ray_that_does_not_start_is_one_line_and_leaves_nothing_running(night, tmp_path):
    """ray.init made to fail as on a loaded machine, after starting a process that ignores
    SIGTERM (as Ray's dashboard agent did)."""
    pid_file = tmp_path / "started.pid"
    script = textwrap.dedent(
        """
        import subprocess, sys
        import ray

        def init_that_times_out(*args, **kwargs):
            stubborn = subprocess.Popen(
                [sys.executable, "-c", "import signal, time; "
                 "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); "
                 "time.sleep(600)"],
                stdout=subprocess.PIPE,
            )
            stubborn.stdout.readline()
            open(sys.argv[1], "w").write(str(stubborn.pid))
            raise Exception(
                "The current node timed out during startup. This could happen because some "
                "of the raylet failed to startup or the GCS has become overloaded."
            )

        ray.init = init_that_times_out
        from usv_ray.cli import main
        sys.exit(main(sys.argv[2:]))
        """
    )
    argv = ["ingest", "--manifest", str(night["manifest"]), "--out", str(tmp_path / "data")]
    settings = [f"--set={s}" for s in SETTINGS] + ["--set=ingest.workers=1"]
    done = subprocess.run(
        [sys.executable, "-c", script, str(pid_file), *argv, *settings],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()[-1]
    assert err.startswith("usv-ray: error: a local Ray did not start (The current node timed out")
    assert "retry" in err and "ingest.workers=0" in err and "Traceback" not in done.stderr
    pid = int(pid_file.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# ------------------------------------------------------------------------------ summaries


def test_the_nights_summaries_count_each_outcome_on_its_own(night, data, tmp_path):
    first = run_predict(CFG, night["diagnosis"], data, tmp_path / "predict")
    assert (first.diagnosed, first.not_ingested, first.unchanged) == (13, 0, 0)

    s = run_ingest(CFG, night["tonight"], data)  # 6 videos and one file that is not there
    assert (s.decoded_now, s.failed_now, s.skipped, s.repaired) == (6, 1, 0, 0)
    assert "decoded 6" in s.text() and "failed 1" in s.text() and "skipped 0" in s.text()
    p = run_predict(CFG, night["diagnosis"], data, tmp_path / "predict")
    assert (p.diagnosed, p.not_ingested, p.failed, p.unchanged) == (6, 1, 0, 13)
    assert "6 diagnosed now" in p.text() and "1 not ingested" in p.text()
    videos = pd.read_parquet(tmp_path / "predict" / "diagnoses.parquet")
    assert (videos["status"] == "ok").sum() == 19
