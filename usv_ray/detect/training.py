"""Train the nodule detector with the training runner (Ray Train, DDP; :mod:`usv_ray.runner`).

Each worker reads its shard of the training frames (``train``), augmented per frame
(:func:`usv_ray.detect.data.augment`); rank 0 validates on the validation patients' frames
(``val``) and the runner keeps the epoch with the best AP at IoU 0.5 (``detect.best``). A
rerun with the same run name resumes from the last checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from usv_ray.config import DetectConfig
from usv_ray.detect.data import augment, collate
from usv_ray.imaging import normalise
from usv_ray.runner import Worker, numpy_collate, shuffled_batches


def detect_all(model: torch.nn.Module, batches: Iterable[Any], device: torch.device) -> tuple:
    """``(truth, found)`` of every frame of ``batches`` (collated frames and boxes): the
    true boxes ``(n, 4)`` and the detections ``(boxes, scores)`` of each frame, in order."""
    truth, found = [], []
    model.eval()
    with torch.no_grad():
        for images, boxes in batches:
            detections = model(normalise(images.to(device)))
            truth += [b.numpy() for b in boxes]
            found += [(b.cpu().numpy(), s.cpu().numpy()) for b, s in detections]
    return truth, found


@dataclass(frozen=True)
class DetectorTask:
    """The detector (a :class:`usv_ray.runner.Task`): trained on ``train``, validated on
    ``val`` (frames of ``size`` x ``size``)."""

    cfg: DetectConfig
    size: int

    @property
    def key(self) -> str:
        return "detector"

    def build(self) -> torch.nn.Module:
        from usv_ray.bundle.trunk import starting_trunk
        from usv_ray.models.detector import build_detector

        model = build_detector(self.meta())
        trunk = starting_trunk(self.cfg.pretrained)  # detect.pretrained: a trunk, imagenet
        if trunk is not None:
            model.load_trunk(trunk)
        return model

    def open(self, worker: Worker) -> tuple[Any, Any]:
        return worker.dataset("train"), worker.dataset("val") if worker.rank == 0 else None

    def batches(self, data: tuple[Any, Any], epoch: int, worker: Worker) -> Iterable[Any]:
        seed = self.cfg.seed + epoch
        return shuffled_batches(data[0], self.cfg.batch_size, collate, seed)
        # (B, 1, S, S) uint8, [(n_i, 4)] * B

    def loss(
        self, model: torch.nn.Module, batch: Any, worker: Worker, generator: torch.Generator
    ) -> tuple[torch.Tensor, int]:
        images, boxes = batch
        inputs, boxes = augment(normalise(images.to(worker.device)), boxes, generator)
        return model(worker.model_input(inputs), boxes), len(boxes)

    def validate(self, model: torch.nn.Module, data: tuple[Any, Any], worker: Worker) -> dict:
        from usv_ray.detect.evaluate import detection_ap

        if data[1] is None:
            return {}
        batches = data[1].iter_torch_batches(batch_size=64, collate_fn=numpy_collate(collate))
        truth, found = detect_all(model, batches, worker.device)
        if not truth:
            return {}
        scores = detection_ap(truth, found)
        return {"val_ap": scores["ap50"], "val_ap_coco": scores["ap"], "val_samples": len(truth)}

    def meta(self) -> dict:
        return {
            "model": self.cfg.model,
            "input_size": self.size,
            "score_threshold": self.cfg.score_threshold,
        }


def frames_dataset(data: Any, video_ids: Iterable[str]) -> Any:
    """The frames (with their boxes) of ``video_ids``, read once and kept in the object
    store, in read order (:func:`usv_ray.runner.frames_dataset`)."""
    from usv_ray.detect.data import FRAME_COLUMNS
    from usv_ray.layout import IngestFolder
    from usv_ray.runner import frames_dataset as read

    return read(IngestFolder(data).frame_shards(video_ids), FRAME_COLUMNS)


def example_frames(truth: list[np.ndarray], count: int = 8) -> list[int]:
    """Positions of ``count`` frames worth showing: frames with a true box (any frame when
    none has one), spread evenly over them."""
    with_boxes = [i for i, boxes in enumerate(truth) if len(boxes)]
    chosen = with_boxes or list(range(len(truth)))
    step = max(1, len(chosen) // count)
    return chosen[::step][:count]
