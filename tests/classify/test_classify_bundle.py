"""What the diagnosis bundle records beside its weights: the final model's epoch count and
the operating point with its cross-fitted readings, its whole trade-off, the warning when
the target sensitivity costs too much specificity, and the curve a reader sees."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from usv_ray.classify.bundle import (
    METHOD,
    TRADEOFF,
    chosen_epochs,
    operating_point,
    operating_point_table,
    weak_specificity,
    write_calibrated_bundle,
)
from usv_ray.classify.folds import calibration_share
from usv_ray.config import ClassifyConfig
from usv_ray.evaluate.calibration import Calibrator
from usv_ray.runner import save_model

IDENTITY = Calibrator("platt", {"a": 1.0, "b": 0.0}, 60, 30)  # Platt a=1, b=0: P unchanged


def test_the_final_model_trains_for_the_median_of_the_folds_best_epochs(tmp_path):
    files = [
        save_model(tmp_path, f"fold={k}", {}, {"best_epoch": best})
        for k, best in enumerate([1, 4, 2])  # counted from 0: epochs 2, 5, 3
    ]
    assert chosen_epochs(files) == 3
    assert chosen_epochs(files[:2]) == 4  # the median 3.5, rounded up


def _oof(shifted_fold: int | None = None) -> pd.DataFrame:
    """60 out-of-fold predictions in 3 folds, positives well above negatives; in
    ``shifted_fold`` the positives score lower than every other fold's."""
    rng = np.random.default_rng(0)
    rows = []
    for fold in range(3):
        for i in range(20):
            label = i % 2
            low = fold == shifted_fold
            prob = rng.uniform(0.4, 0.5) if label and low else rng.uniform(0.75, 0.95)
            rows.append(
                {
                    "video_id": f"v{fold}-{i}",
                    "patient_key": f"p{fold}-{i // 2}",
                    "fold": fold,
                    "prob": prob if label else rng.uniform(0.05, 0.3),
                    "label": label,
                }
            )
    return pd.DataFrame(rows)


@pytest.mark.filterwarnings("ignore:y_prob separates the classes")  # it does, by design
def test_the_operating_point_reaches_the_target_and_its_cross_fitted_reading_is_honest():
    cfg = ClassifyConfig(target_sensitivity=0.95, n_boot=50)
    easy = operating_point(cfg, _oof(), IDENTITY)
    # the highest threshold that reaches 95%: it may give up one positive of 30
    assert easy["sensitivity"]["value"] >= 0.95 and easy["specificity"]["value"] == 1
    assert easy["sensitivity_cross_fitted"]["value"] >= 0.9
    # one fold's positives score below the others': fitted on every fold, the threshold
    # drops to catch them; chosen on the other folds, it misses that fold's positives
    hard = operating_point(cfg, _oof(shifted_fold=2), IDENTITY)
    assert hard["threshold"] <= 0.5 and hard["sensitivity"]["value"] >= 0.95
    assert 0.5 <= hard["sensitivity_cross_fitted"]["value"] <= 2 / 3  # fold 2's all missed
    for name in ("sensitivity", "specificity", "sensitivity_cross_fitted"):
        stats = hard[name]
        assert stats["low"] <= stats["value"] <= stats["high"]


def _noisy_oof(n_patients: int = 60, shift: float = 1.0, seed: int = 1) -> pd.DataFrame:
    """Two videos per patient in 3 folds; P = sigmoid(shift * label + noise): the classes
    overlap, so sensitivity costs specificity."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = p % 2
        for v in range(2):
            z = shift * label + rng.normal()
            rows.append(
                {
                    "video_id": f"v{p}-{v}",
                    "patient_key": f"p{p}",
                    "fold": p % 3,
                    "prob": 1 / (1 + np.exp(-z)),
                    "label": label,
                }
            )
    return pd.DataFrame(rows)


def test_the_trade_off_agrees_with_scikit_learn_at_every_threshold():
    oof = _noisy_oof()
    cfg = ClassifyConfig(target_sensitivity=0.93, n_boot=50)
    point = operating_point(cfg, oof, IDENTITY)
    targets = [row["target_sensitivity"] for row in point["curve"]]
    assert targets == sorted({*TRADEOFF, 0.93})  # the bundle's own target among them
    fpr, tpr, thresholds = roc_curve(oof["label"], oof["prob"], drop_intermediate=False)
    for row in point["curve"]:
        # the highest of scikit-learn's thresholds whose TPR reaches the target
        (at,) = np.flatnonzero(tpr >= row["target_sensitivity"])[:1]
        assert row["threshold"] == pytest.approx(thresholds[at])
        assert row["sensitivity"]["value"] == pytest.approx(tpr[at])
        assert row["specificity"]["value"] == pytest.approx(1 - fpr[at])
        reads = (IDENTITY.apply(oof["prob"].to_numpy()) >= row["threshold"]).mean()
        assert row["positive_share"]["value"] == pytest.approx(reads)
        for name, stats in row.items():
            if isinstance(stats, dict):
                assert stats["low"] <= stats["value"] <= stats["high"], name
    # the bundle's own row is the point's top level: what the night reads at
    (own,) = (row for row in point["curve"] if row["target_sensitivity"] == 0.93)
    assert point["threshold"] == own["threshold"] and point["n_videos"] == len(oof)
    table = operating_point_table(point)
    assert (table["chosen"] == "yes").sum() == 1
    assert table.loc[table["chosen"] == "yes", "target_sensitivity"].item() == 93
    assert table["threshold"].is_monotonic_decreasing  # a higher target, a lower threshold


@pytest.mark.filterwarnings("ignore:y_prob separates the classes")  # _oof does, by design
def test_a_costly_target_warns_in_one_line_naming_both_numbers():
    oof = _noisy_oof(shift=0.8)
    cfg = ClassifyConfig(target_sensitivity=0.98, min_specificity=0.5, n_boot=50)
    point = operating_point(cfg, oof, IDENTITY)
    spec = point["specificity_cross_fitted"]["value"]
    assert spec < 0.5
    warning = weak_specificity(cfg, point)
    assert warning is not None and "\n" not in warning
    assert f"{100 * spec:.1f}%" in warning and "classify.min_specificity 50%" in warning
    assert "target sensitivity 98%" in warning
    # a target the data can afford, or a floor it clears, says nothing
    assert weak_specificity(ClassifyConfig(min_specificity=0.0), point) is None
    easy = ClassifyConfig(target_sensitivity=0.95, n_boot=50)
    assert weak_specificity(easy, operating_point(easy, _oof(), IDENTITY)) is None


def test_the_operating_curve_is_drawn_with_the_bundle_point(tmp_path):
    from usv_ray.evaluate.plots import operating_curve_plot

    cfg = ClassifyConfig(target_sensitivity=0.9, n_boot=20)
    point = operating_point(cfg, _noisy_oof(), IDENTITY)
    path = operating_curve_plot(point, 0.5, tmp_path / "operating_curve.png", "toy")
    assert path.stat().st_size > 10_000


def test_the_calibration_share_holds_whole_patients_of_both_classes_out():
    videos = pd.DataFrame(
        {
            "video_id": [f"v{i}" for i in range(40)],
            "patient_key": [f"p{i // 2}" for i in range(40)],
            "label": [(i // 2) % 2 for i in range(40)],
        }
    )
    share = calibration_share(videos, ClassifyConfig(calibration_share=0.2))
    assert share["label"].nunique() == 2 and share["patient_key"].nunique() == 4  # a fifth of 20
    kept = videos[~videos["video_id"].isin(share["video_id"])]
    assert not set(kept["patient_key"]) & set(share["patient_key"])  # no patient split
    assert calibration_share(videos, ClassifyConfig()).empty  # 0: the out-of-fold way
    with pytest.raises(ValueError, match=r"in \[0, 0.5\]"):
        calibration_share(videos, ClassifyConfig(calibration_share=0.7))
    with pytest.raises(ValueError, match="one class only"):
        calibration_share(videos.assign(label=1), ClassifyConfig(calibration_share=0.2))


@pytest.mark.filterwarnings("ignore::usv_ray.evaluate.metrics.MetricWarning")
def test_a_calibration_share_calibrates_what_the_bundle_deploys(tmp_path):
    """With a share, the calibrator and threshold are fitted on the members' mean P of its
    videos (what a night reads), and the folder keeps what they were fitted on."""
    from toy_bundle import INGEST, write_toy_bundle, write_toy_video, write_videos_table

    from usv_ray import bundle
    from usv_ray.bundle.diagnosis import read_video
    from usv_ray.layout import ClassifyFolder, IngestFolder

    data = tmp_path / "data"
    IngestFolder(data).claim(INGEST)
    rows = [{"video_id": f"v{i}", "patient_key": f"p{i // 2}"} for i in range(12)]
    for i, row in enumerate(rows):
        write_toy_video(data, row["video_id"], row["patient_key"], frames=5, seed=i)
    write_videos_table(data, rows)
    share = pd.DataFrame(rows).assign(label=[(i // 2) % 2 for i in range(12)])
    toy = write_toy_bundle(tmp_path / "cls", members=2)  # the members' files, as classify left them
    meta = {"ingest": bundle.read(toy, "diagnosis").record["ingest"]}
    out = ClassifyFolder(tmp_path / "cls")
    scored = _oof().assign(method=METHOD)
    cfg = ClassifyConfig(folds=3, n_boot=20, calibration_share=0.2)
    record = write_calibrated_bundle(cfg, data, out, [0, 1], meta, scored, share, "toy")

    read = pd.read_parquet(out.calibration_share)
    model = bundle.load(out.bundle, "diagnosis")
    for row in read.itertuples():
        images, _, _ = read_video(str(IngestFolder(data).frames(row.video_id)), None)
        members = model.member_probs(images)[0]
        np.testing.assert_allclose(row.member_probs, members, rtol=1e-6)
        assert row.prob == pytest.approx(members.mean())
    assert sorted(read["fold"].unique()) == [0, 1, 2]  # the share's patients, cross-fitted
    assert read.groupby("patient_key")["fold"].nunique().max() == 1
    assert "12 videos of 6 patients that no member trained on" in record["calibrator_fitted_on"]
    assert record["calibrator"]["n_videos"] == 12 and record["operating_point"]["n_videos"] == 12
    assert len(record["members"]) == 2
    assert bundle.read(out.bundle, "diagnosis").version == record["version"]
    assert not (out.root / "share_members").exists()  # the members' reading left nothing
