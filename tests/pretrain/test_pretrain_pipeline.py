"""`usv-ray pretrain` on a toy ingest folder (training in this process, frames read by Ray
Data): the trunk bundle it writes, a rerun that does nothing, new data refused, and the
frame CNN and the detector starting from the trunk, or refusing a trunk of other frames."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from classify.toy_frames import TOY_INGEST, write_toy_frames  # tests/classify/toy_frames.py

from usv_ray import bundle
from usv_ray.bundle import BundleError
from usv_ray.bundle.trunk import check_pretrained, starting_trunk
from usv_ray.config import ClassifyConfig, DetectConfig, IngestConfig, load_config
from usv_ray.io import FolderClaimed, rows_to_table, write_table
from usv_ray.layout import IngestFolder, digest_rows
from usv_ray.models.frame_cnn import gray_resnet18
from usv_ray.pretrain.pipeline import PretrainError, pretrain_videos, run_pretrain
from usv_ray.schemas import VIDEOS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SETTINGS = [
    "pretrain.epochs=2",
    "pretrain.batch_size=4",
    "pretrain.workers=0",
    "pretrain.val_fraction=0.2",
    "pretrain.projection=16",
    "ray.progress=false",
]


def _videos(data: Path, ids: list[str], labelled: int) -> None:
    """videos.parquet: the first ``labelled`` videos with a label, the rest without."""
    rows = [
        {
            "video_id": v,
            "patient_key": f"p{i}",
            "label": i % 2 if i < labelled else -1,
            "source": f"toy/{v}",
            "status": "ok",
        }
        for i, v in enumerate(ids)
    ]
    write_table(rows_to_table(rows, VIDEOS), data / "videos.parquet")


@pytest.fixture(scope="module")
def pretrained(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    ids = write_toy_frames(root / "data", n_videos=10, frames=4)
    _videos(root / "data", ids, labelled=6)
    cfg = load_config(None, SETTINGS)
    summary = run_pretrain(cfg, root / "data", root / "pre")
    return {"root": root, "cfg": cfg, "summary": summary, "ids": ids}


def test_the_trunk_bundle_learnt_from_every_video_without_a_label(pretrained):
    s, out = pretrained["summary"], pretrained["root"] / "pre"
    assert s.trained and (s.videos, s.patients) == (10, 10) and s.frames == 8 * 4
    record = json.loads((out / "bundle" / "bundle.json").read_text())
    assert record["kind"] == "trunk" and record["version"].startswith("trunk-")
    assert record["ingest"]["frame_size"] == TOY_INGEST.frame_size
    assert record["method"]["settings"]["max_gap"] == 3 and "NT-Xent" in record["method"]["name"]
    assert record["trained_on"] == {"videos": 10, "patients": 10, "frames": 32}
    assert record["metrics"]["validation"]["val_loss"] > 0
    assert (out / "tables" / "pretraining.md").exists() and (out / "report.json").exists()
    assert set(starting_trunk(str(out / "bundle"))) == set(gray_resnet18().state_dict())
    trunk = bundle.load(out / "bundle", "trunk")  # the one load() of every kind
    frames = np.random.default_rng(0).integers(0, 255, (3, 32, 32), dtype=np.uint8)
    assert trunk(frames).shape == (3, 512) and trunk.version == record["version"]
    assert "pretrain: trained" in s.text() and "classify.pretrained=" in s.text()


def test_a_rerun_with_nothing_new_does_nothing(pretrained):
    out = pretrained["root"] / "pre"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run_pretrain(pretrained["cfg"], pretrained["root"] / "data", out)
    assert not again.trained and again.bundle["version"] == pretrained["summary"].bundle["version"]
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == {p: t for p, t in before.items() if p.name != ".lock"}


def test_a_night_of_new_videos_is_refused_in_the_old_folder(pretrained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(pretrained["root"] / "data", data)
    _videos(data, pretrained["ids"], labelled=4)  # other labels: no matter, nothing read
    relabelled = pretrain_videos(IngestFolder(data), pretrained["cfg"].pretrain)
    digest = digest_rows(relabelled.itertuples(index=False))
    assert digest == pretrained["summary"].bundle["fingerprints"]["data"]
    write_toy_frames(tmp_path / "more", n_videos=11, frames=4)
    shutil.copy(tmp_path / "more" / "frames" / "v10.parquet", data / "frames")
    _videos(data, [*pretrained["ids"], "v10"], labelled=4)
    with pytest.raises(FolderClaimed, match="other settings or data"):
        run_pretrain(pretrained["cfg"], data, pretrained["root"] / "pre")


def test_the_frame_cnn_and_the_detector_start_from_the_trunk(pretrained):
    from usv_ray.classify.cnn import CnnFold, CnnTask
    from usv_ray.detect.training import DetectorTask

    folder = str(pretrained["root"] / "pre" / "bundle")
    trunk = starting_trunk(folder)
    cnn = CnnTask(ClassifyConfig(pretrained=folder), CnnFold(0, (), ())).build()
    assert torch.equal(cnn.backbone.conv1.weight, trunk["conv1.weight"])
    assert torch.equal(cnn.backbone.layer4[1].bn2.running_var, trunk["layer4.1.bn2.running_var"])
    detector = DetectorTask(DetectConfig(pretrained=folder), 32).build()
    assert torch.equal(detector.stem[0].weight, trunk["conv1.weight"])
    assert torch.equal(detector.layer3[0].conv1.weight, trunk["layer3.0.conv1.weight"])
    fresh = CnnTask(ClassifyConfig(), CnnFold(0, (), ())).build()
    assert not torch.equal(fresh.backbone.conv1.weight, trunk["conv1.weight"])


def test_a_trunk_of_other_frames_or_none_at_all_is_a_clear_error(pretrained, tmp_path):
    folder = str(pretrained["root"] / "pre" / "bundle")
    check_pretrained(folder, pretrained["root"] / "data", "classify.pretrained")  # the same
    other = tmp_path / "data64"
    IngestFolder(other).claim(IngestConfig(frame_size=64))
    with pytest.raises(BundleError, match=r"classify.pretrained: .*ingest.frame_size: 64 there"):
        check_pretrained(folder, other, "classify.pretrained")
    with pytest.raises(BundleError, match=r"detect\.pretrained: no model bundle"):
        check_pretrained(str(tmp_path / "nowhere"), other, "detect.pretrained")
    diagnosis = tmp_path / "diagnosis"
    diagnosis.mkdir()
    (diagnosis / "bundle.json").write_text(json.dumps({"format": 1, "kind": "diagnosis"}))
    with pytest.raises(BundleError, match=r"detect\.pretrained"):
        check_pretrained(str(diagnosis), other, "detect.pretrained")


def test_which_videos_teach_it(pretrained, tmp_path):
    data = IngestFolder(pretrained["root"] / "data")
    every = pretrain_videos(data, load_config(None, SETTINGS).pretrain)
    assert len(every) == 10 and set(every["split"]) == {"train", "val"}
    held = every.groupby("patient_key")["split"].nunique()
    assert (held == 1).all()  # a patient's videos are on one side
    only = load_config(None, [*SETTINGS, "pretrain.videos=unlabelled"]).pretrain
    unlabelled = pretrain_videos(data, only)
    assert sorted(unlabelled["video_id"]) == ["v6", "v7", "v8", "v9"]
    with pytest.raises(PretrainError, match="val_fraction"):
        pretrain_videos(data, load_config(None, ["pretrain.val_fraction=1"]).pretrain)
    empty = tmp_path / "empty"
    write_toy_frames(empty, n_videos=2, frames=2)
    _videos(empty, ["v0", "v1"], labelled=2)
    with pytest.raises(PretrainError, match="no unlabelled video"):
        pretrain_videos(IngestFolder(empty), only)
