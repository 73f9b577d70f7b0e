"""Detection quality by COCO's own evaluation (pycocotools), and its figures.

:func:`detection_ap` gives AP at IoU 0.5 and AP averaged over IoU 0.5:0.95 (COCO's primary
figure), both over every frame given (frames without a nodule count: a box there is a false
positive), with the precision-recall curve at IoU 0.5 on COCO's 101 recall points. Boxes
are ``x0, y0, x1, y1`` in pixels; there is one class, the nodule.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

Found = Sequence[tuple[np.ndarray, np.ndarray]]  # per frame: boxes (k, 4), scores (k,)


def detection_ap(truth: Sequence[np.ndarray], found: Found) -> dict:
    """``{"ap50", "ap", "recall", "precision", "frames", "boxes"}`` of the detections
    ``found`` against the true boxes ``truth`` (both per frame, in the same order).

    ``recall`` and ``precision`` are the PR curve at IoU 0.5 (101 points; precision NaN
    where a recall is never reached). AP is NaN when there is no true box at all.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(truth) != len(found):
        raise ValueError(f"{len(truth)} frames of truth, {len(found)} of detections")
    annotations, detections = [], []
    for image, (true_boxes, (boxes, scores)) in enumerate(zip(truth, found, strict=True)):
        for x0, y0, x1, y1 in np.asarray(true_boxes, np.float64).reshape(-1, 4):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image,
                    "category_id": 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
        for (x0, y0, x1, y1), score in zip(np.asarray(boxes).reshape(-1, 4), scores, strict=True):
            detections.append(
                {
                    "image_id": image,
                    "category_id": 1,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "score": float(score),
                }
            )
    recall = np.linspace(0.0, 1.0, 101)
    result = {"frames": len(truth), "boxes": len(annotations), "recall": recall}
    if not annotations or not detections:
        zero = 0.0 if annotations else math.nan  # no detection: nothing found
        return {**result, "ap50": zero, "ap": zero, "precision": np.full(101, np.nan)}
    with _quiet():
        coco = COCO()
        coco.dataset = {
            "images": [{"id": i} for i in range(len(truth))],
            "annotations": annotations,
            "categories": [{"id": 1, "name": "nodule"}],
        }
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(detections), "bbox")
        evaluation.params.maxDets = [1, 10, 100]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"][0, :, 0, 0, -1]  # IoU 0.5, all areas, 100 dets
    return {
        **result,
        "ap50": float(evaluation.stats[1]),
        "ap": float(evaluation.stats[0]),
        "precision": np.where(precision < 0, np.nan, precision),
    }


@contextlib.contextmanager
def _quiet():
    """pycocotools prints its progress; silence it. Its own ``print`` names are replaced,
    not ``sys.stdout``: a Ray Train worker's thread writes to a stream of its own."""
    import pycocotools.coco
    import pycocotools.cocoeval

    modules = (pycocotools.coco, pycocotools.cocoeval)
    for module in modules:
        module.print = lambda *args, **kwargs: None
    try:
        yield
    finally:
        for module in modules:
            del module.print


def pr_curve_plot(curves: dict[str, dict], path: Path, subtitle: str) -> Path:
    """The precision-recall curves at IoU 0.5 of :func:`detection_ap` results, by name."""
    from usv_ray.evaluate.plots import new_figure, save_figure, unit_square

    fig, ax = new_figure("Nodule detection: precision-recall at IoU 0.5", subtitle)
    for name, result in curves.items():
        label = f"{name} (AP50 {100 * result['ap50']:.1f}, AP {100 * result['ap']:.1f})"
        ax.plot(result["recall"], result["precision"], label=label)
    unit_square(ax, "Recall", "Precision")
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path)


def examples_plot(
    frames: np.ndarray,
    truth: Sequence[np.ndarray],
    found: Found,
    path: Path,
    subtitle: str,
    shown: float = 0.5,
) -> Path:
    """Frames ``(N, S, S)`` with their true boxes (green) and detections scoring at least
    ``shown`` (orange, with the score), in a grid."""
    from matplotlib.patches import Rectangle

    from usv_ray.evaluate.plots import new_figure, save_figure

    fig, ax = new_figure("Nodule detection: examples (green truth, orange detections)", subtitle)
    ax.remove()
    columns = min(4, len(frames)) or 1
    rows = max(1, math.ceil(len(frames) / columns))
    for i, frame in enumerate(frames):
        panel = fig.add_subplot(rows, columns, i + 1)
        panel.imshow(frame, cmap="gray", vmin=0, vmax=255)
        panel.set_axis_off()
        for x0, y0, x1, y1 in np.asarray(truth[i]).reshape(-1, 4):
            panel.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="#009E73"))
        boxes, scores = found[i]
        for (x0, y0, x1, y1), score in zip(np.asarray(boxes).reshape(-1, 4), scores, strict=True):
            if score >= shown:
                panel.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="#E69F00"))
                panel.text(x0, y0, f"{score:.2f}", color="#E69F00", fontsize=6, va="bottom")
    return save_figure(fig, path)
