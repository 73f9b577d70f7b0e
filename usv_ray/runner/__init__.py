"""The one training runner every model uses: frame CNN, LSTMs, 3D CNNs, re-ID CM and VM,
the detector.

A stage describes each model it wants as a :class:`Task` (its model, its batches, its loss
and its validation) and hands a list of them to :func:`train_models` with the run's
:class:`RunSettings` (the model's config section, as it is, and the stage's resources).
The runner owns everything else, the same way for every model:

* **The jobs of a run** (:mod:`~usv_ray.runner.fit`). One run trains its tasks one after
  another (each Ray Train run costs ~20 s of start-up on 2 cores). A finished model's file
  is written (rank 0) before the report that lists it as done, so a checkpoint never
  names a missing file.
* **The epoch loop** (:mod:`~usv_ray.runner.loop`), with the optimizer and learning-rate
  schedule of the model's section (a task may build its own optimizer), mixed precision
  (fp32, bf16, or fp16 with a gradient scaler), channels-last memory layout for 2D CNNs,
  and a stop with a clear error on a non-finite loss.
* **Validation** on rank 0 every ``val_every`` epochs and at the last, and **one rule for
  the best epoch** (see :mod:`~usv_ray.runner.loop`).
* **Checkpoint and resume** (:mod:`~usv_ray.runner.workers`). Rank 0 checkpoints the
  run's state when a model is finished and at most every ``checkpoint_every_s`` seconds
  between; every rank reports then (``ray.train.report`` is a barrier, ~0.2 s each on a
  laptop) and, inside a Tune trial, every epoch. The state lists finished models and holds
  the current one's weights, optimizer, scaler, best weights and epoch, so it stays the
  size of one model. A rerun (or a Ray Train restart after a crash) with the same run name
  resumes at the (model, epoch) where the last checkpoint stopped; when every model is
  finished it starts nothing at all; a finished model is final (a rerun that asks for
  other epochs is an error, not a silent reuse).
* **The finished-model file** (:mod:`~usv_ray.runner.files`): the best epoch's weights
  with their metadata, the project's one model-file format.

Runs are reproducible from the seed: the datasets a run trains on keep the order they were
read in (:func:`in_order`), every epoch's random draws (augmentation, dropout) come from
``(seed, epoch, rank)`` alone (:func:`seed_epoch`), tasks draw their batch order from
``(seed, epoch)``, and the schedule's rate is a function of the epoch; so a run resumed
after a kill ends with the weights of a run never killed. With several workers each still
sees its own shard in order, but which blocks reach which worker is decided as they stream
(``streaming_split``), so DDP runs are not bit-reproducible.
"""

from usv_ray.runner.data import (
    classifier_scores,
    frames_dataset,
    in_order,
    numpy_collate,
    shuffled_batches,
)
from usv_ray.runner.files import load_model, model_path, save_model, training_log
from usv_ray.runner.fit import train_models
from usv_ray.runner.loop import (
    Task,
    TrainedModel,
    TrainingError,
    cpu_weights,
    seed_epoch,
    unwrap,
)
from usv_ray.runner.settings import RunSettings
from usv_ray.runner.workers import RayTrainWorker, Worker

__all__ = [
    "RayTrainWorker",
    "RunSettings",
    "Task",
    "TrainedModel",
    "TrainingError",
    "Worker",
    "classifier_scores",
    "cpu_weights",
    "frames_dataset",
    "in_order",
    "load_model",
    "model_path",
    "numpy_collate",
    "save_model",
    "seed_epoch",
    "shuffled_batches",
    "train_models",
    "training_log",
    "unwrap",
]
