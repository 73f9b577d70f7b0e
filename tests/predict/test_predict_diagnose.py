"""The batch-inference class of `usv-ray predict`, without Ray: what one video's row holds."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from toy_bundle import SIZE, write_toy_bundle, write_toy_data

from usv_ray.bundle import load
from usv_ray.bundle.diagnosis import read_video
from usv_ray.imaging import normalise
from usv_ray.models.lstm import pad_features
from usv_ray.predict.diagnose import ROW_SCHEMA, Diagnoser, tracklet_spans


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("diagnose")
    ids = write_toy_data(root / "data", n_videos=2, frames=5, tracklets=2)
    platt = {"method": "platt", "params": {"a": 2.0, "b": -0.5}, "n_videos": 9, "n_positive": 4}
    bundle = write_toy_bundle(root / "classify", members=3, calibrator=platt, threshold=0.4)
    return root, ids, bundle


def _batch(root, ids, tracklets=True):
    data = root / "data"
    return {
        "video_id": np.array(ids, dtype=object),
        "patient_key": np.array(["p0"] * len(ids), dtype=object),
        "study_key": np.array(["s0"] * len(ids), dtype=object),
        "frames": np.array([str(data / "frames" / f"{v}.parquet") for v in ids], dtype=object),
        "tracklets": np.array(
            [str(data / "tracklets" / f"{v}.parquet") if tracklets else "" for v in ids],
            dtype=object,
        ),
    }


@pytest.mark.parametrize(
    ("frame_index", "tracklets", "expected"),
    [
        ([0, 3, 6, 9, 12], [[0, 6]], [[0, 1, 2]]),
        ([0, 3, 6, 9, 12], [[4, 5]], [[1]]),  # no stored frame inside: the nearest the middle
        ([0, 3, 6, 9, 12], [[10, 40], [3, 3]], [[4], [1]]),
        ([7], [[0, 2]], [[0]]),
    ],
)
def test_a_tracklet_reads_the_stored_frames_it_spans(frame_index, tracklets, expected):
    spans = tracklet_spans(np.array(frame_index), tracklets)
    assert [s.tolist() for s in spans] == expected


def test_every_member_reads_the_video_and_each_tracklet(toy):
    root, _, bundle = toy
    model = load(bundle, "diagnosis")
    images, index, tracks = read_video(
        str(root / "data" / "frames" / "v0.parquet"),
        str(root / "data" / "tracklets" / "v0.parquet"),
    )
    assert images.shape == (5, 1, SIZE, SIZE) and index.tolist() == [0, 3, 6, 9, 12]
    spans = tracklet_spans(index, tracks["frame_index"].to_pylist())
    video, parts = model.member_probs(images, spans)
    assert video.shape == (3,) and parts.shape == (2, 3)
    with torch.no_grad():  # by hand: CNN features of every frame, the LSTM over a sequence
        for m, (cnn, lstm) in enumerate(model.members):
            features = cnn.features(normalise(images))
            for positions, expected in [(np.arange(5), video[m]), (spans[1], parts[1, m])]:
                padded, lengths = pad_features([features[torch.as_tensor(positions)]])
                assert lstm(padded, lengths)[0, 1].item() == pytest.approx(expected, abs=1e-6)


def test_a_row_holds_the_calibrated_ensemble_its_spread_and_its_reading(toy):
    root, ids, bundle = toy
    rows = Diagnoser(str(bundle))(_batch(root, ids))
    assert rows.schema.equals(ROW_SCHEMA) and rows.num_rows == 2
    model = load(bundle, "diagnosis")
    for row in rows.to_pylist():
        members = np.array(row["member_probs"])
        assert row["status"] == "ok" and len(members) == 3 and row["frames"] == 5
        assert row["prob_raw"] == pytest.approx(members.mean(), abs=1e-6)
        assert row["spread"] == pytest.approx(members.std(), abs=1e-6)
        assert row["prob"] == pytest.approx(model.calibrator.apply([members.mean()])[0], abs=1e-6)
        assert row["reading"] == ("malignant" if row["prob"] >= 0.4 else "benign")
        assert row["threshold"] == pytest.approx(0.4) and row["model_version"] == model.version
        video = row["video_id"]
        assert [t["tracklet_id"] for t in row["tracklets"]] == [f"{video}-t0", f"{video}-t1"]
        for t in row["tracklets"]:
            assert t["prob"] == pytest.approx(model.calibrator.apply([t["prob_raw"]])[0], abs=1e-6)
    without = Diagnoser(str(bundle))(_batch(root, ids, tracklets=False)).to_pylist()
    np.testing.assert_allclose(  # the same video, whichever tracklets ride along
        [r["prob"] for r in without], [r["prob"] for r in rows.to_pylist()], atol=1e-6
    )
    assert all(r["tracklets"] == [] for r in without)


def test_an_unreadable_video_is_an_error_row_and_the_batch_goes_on(toy, tmp_path):
    root, ids, bundle = toy
    batch = _batch(root, ids)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    wrong = tmp_path / "wrong.parquet"  # frames of another size than the bundle reads
    table = pq.read_table(batch["frames"][0])
    small = [bytes(16 * 16)] * table.num_rows
    table = table.set_column(table.schema.get_field_index("image"), "image", [small])
    table = table.set_column(table.schema.get_field_index("height"), "height", [[16] * 5])
    table = table.set_column(table.schema.get_field_index("width"), "width", [[16] * 5])
    pq.write_table(table, wrong)
    batch["frames"] = np.array([str(garbage), str(wrong)], dtype=object)
    batch["video_id"] = np.array(["bad", "small"], dtype=object)
    rows = Diagnoser(str(bundle))(batch).to_pylist()
    assert [r["status"] for r in rows] == ["error", "error"]
    assert "Parquet" in rows[0]["error"] or "parquet" in rows[0]["error"]
    assert "the bundle reads 32 x 32" in rows[1]["error"]
    assert rows[0]["prob"] is None and rows[0]["tracklets"] == []


def test_a_video_that_failed_here_is_tried_again_one_ingest_could_not_read_is_not(tmp_path):
    import pandas as pd

    from usv_ray.layout import IngestFolder
    from usv_ray.predict.pipeline import _todo

    now = pd.Timestamp.now(tz="UTC")
    done = pd.DataFrame(
        {
            "video_id": ["fine", "lost", "unreadable"],
            "status": ["ok", "error", "error"],
            "error": [None, "RuntimeError: worker died", "not ingested: not_video: x"],
            "diagnosed_at": [now] * 3,
        }
    )
    videos = pd.DataFrame({"video_id": ["fine", "lost", "unreadable", "new"]})
    assert _todo(IngestFolder(tmp_path), videos, done)["video_id"].tolist() == ["lost", "new"]
