"""What the diagnosis bundle records beside its weights: the final model's epoch count and
the operating point with its cross-fitted readings."""

import numpy as np
import pandas as pd
import pytest

from usv_ray.classify.bundle import chosen_epochs, operating_point
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
