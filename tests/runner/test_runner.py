import dataclasses
import itertools
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from runner_checks import assert_resume_is_exact

from usv_ray.config import TrainConfig
from usv_ray.runner import (
    RunSettings,
    TrainingError,
    Worker,
    cpu_weights,
    load_model,
    numpy_collate,
    seed_epoch,
    train_models,
)
from usv_ray.runner.files import MODEL_FORMAT
from usv_ray.runner.settings import lr_factor


def _draws(seed, epoch, rank):
    """(augmentation draws, dropout draws) of one epoch seeded by ``seed_epoch``."""
    generator = seed_epoch(seed, epoch, rank)
    augmentation = torch.rand(4, generator=generator)
    dropout = torch.nn.functional.dropout(torch.ones(64), p=0.5, training=True)
    return augmentation, dropout


def test_kept_weights_do_not_follow_the_training_on():
    # the best epoch's weights, kept on a CPU, must stay that epoch's: a view of the live
    # parameters would end as the last epoch's (every "best" model was the last one)
    model = torch.nn.Linear(3, 2)
    kept = cpu_weights(model.state_dict())
    before = {k: v.clone() for k, v in kept.items()}
    with torch.no_grad():
        model.weight.add_(1.0)
        model.bias.zero_()
    for key, value in kept.items():
        assert not value.requires_grad
        assert torch.equal(value, before[key]), key
    assert not torch.equal(kept["weight"], model.weight.detach())


def test_an_epochs_draws_depend_on_seed_epoch_and_rank_alone():
    first = _draws(0, 3, 0)
    torch.rand(100)  # whatever ran before (a resume starts a fresh process)
    again = _draws(0, 3, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    for other in (_draws(1, 3, 0), _draws(0, 4, 0), _draws(0, 3, 1)):
        assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])
    # augmentation and the global generator (dropout) are separate streams, not one twice
    generator = seed_epoch(0, 3, 0)
    assert not torch.equal(torch.rand(4, generator=generator), torch.rand(4))


@pytest.mark.ray
def test_numpy_collate_feeds_iter_torch_batches_without_the_deprecation(ray_session):
    import ray.data
    from ray.util.annotations import RayDeprecationWarning

    def collate(batch):  # the shape of collate_frames: a dict of numpy arrays in
        return torch.from_numpy(np.asarray(batch["id"]) * 2)

    dataset = ray.data.range(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RayDeprecationWarning)  # a plain function warns
        batches = list(dataset.iter_torch_batches(batch_size=4, collate_fn=numpy_collate(collate)))
    assert sorted(torch.cat(batches).tolist()) == [2 * i for i in range(10)]


@dataclass(frozen=True)
class ToyTask:
    """A tiny classifier on fixed random data; ``scores[epoch]`` scripts its validation."""

    key: str = "toy"
    scores: tuple[float, ...] | None = None  # val_loss by epoch; None: no validation set
    conv: bool = False  # a 2D conv model on (B, 1, 4, 4) inputs

    def build(self):
        if self.conv:
            return torch.nn.Sequential(
                torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(64, 2)
            )
        return torch.nn.Sequential(
            torch.nn.Linear(6, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 2)
        )

    def open(self, worker):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(40, 1, 4, 4, generator=g) if self.conv else torch.randn(40, 6, generator=g)
        return x, (x.flatten(1).sum(1) > 0).long()

    def batches(self, data, epoch, worker):
        x, y = data
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        return [(x[i], y[i]) for i in order.split(8)]

    def loss(self, model, batch, worker, generator):
        x, y = batch
        x = worker.model_input(x + 0.01 * torch.randn(x.shape, generator=generator))
        logits = model(x)
        self.seen_dtypes.append(logits.dtype) if hasattr(self, "seen_dtypes") else None
        return torch.nn.functional.cross_entropy(logits, y), len(y)

    def validate(self, model, data, worker):
        return {} if self.scores is None else {"val_loss": self.scores[_validations(model)]}

    def meta(self):
        return {"toy": True}


def _validations(model) -> int:
    """How often ``model`` has been validated (counted on the model object itself)."""
    model.validated = getattr(model, "validated", -1) + 1
    return model.validated


TRAIN = {f.name for f in dataclasses.fields(TrainConfig)}


def _settings(**changes) -> RunSettings:
    """The runner's settings of a toy run: the model's section (TrainConfig) from the keys
    that are its own, the run's from the others."""
    values = {"epochs": 4, "lr": 1e-2, "seed": 0, "workers": 0, "checkpoint_every_s": 0}
    values.update(changes)
    train = TrainConfig(**{k: values.pop(k) for k in list(values) if k in TRAIN})
    return RunSettings(train=train, **values)


def _weights_of_epoch(tmp_path, epochs, **changes):
    """The last weights after ``epochs`` epochs (a run without validation keeps its last)."""
    settings = _settings(**{**changes, "epochs": epochs})
    path = train_models([ToyTask()], settings, tmp_path, f"last{epochs}")["toy"].path
    return load_model(path)[0]


@pytest.mark.parametrize(
    ("scores", "metric", "best_epoch"),
    [
        ((0.9, 0.5, 0.7, 0.6), "val_loss", 1),  # lowest loss
        ((0.9, 0.5, 0.5, 0.4), "val_loss", 3),
        ((0.9, 0.5, 0.5, 0.6), "val_loss", 1),  # a tie keeps the earlier epoch
        ((math.nan, 0.8, math.nan, 0.9), "val_loss", 1),  # NaN is never best
        (None, "val_loss", 3),  # no validation set: the last epoch
    ],
)
def test_the_best_epoch_is_kept_by_one_rule(tmp_path, scores, metric, best_epoch):
    trained = train_models([ToyTask(scores=scores)], _settings(), tmp_path, "run")["toy"]
    weights, meta = load_model(trained.path)
    assert trained.best_epoch == best_epoch == meta["best_epoch"]
    expected = _weights_of_epoch(tmp_path, best_epoch + 1)
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert meta["toy"] and meta["epochs"] == 4 and meta["precision"] == "fp32"
    if scores is None:
        assert math.isnan(trained.best_value)


def test_validation_every_n_epochs_and_at_the_last(tmp_path):
    settings = _settings(val_every=3, epochs=5)
    train_models([ToyTask(scores=(0.5, 0.1))], settings, tmp_path, "run")
    from usv_ray.runner import training_log

    validated = [row["epoch"] for row in training_log(tmp_path, "run") if "val_loss" in row]
    assert validated == [2, 4]


def test_a_finished_run_trains_nothing_again_and_a_lost_file_is_trained_again(tmp_path):
    tasks = [ToyTask("a", scores=(0.5,) * 4), ToyTask("b", scores=(0.5,) * 4)]
    first = train_models(tasks, _settings(), tmp_path, "run")
    written = {k: m.path.stat().st_mtime_ns for k, m in first.items()}
    assert train_models(tasks, _settings(), tmp_path, "run") == first
    assert {k: m.path.stat().st_mtime_ns for k, m in first.items()} == written
    first["b"].path.unlink()
    again = train_models(tasks, _settings(), tmp_path, "run")
    assert again["b"].path.exists() and again["b"].start_epoch == 0
    assert again["a"].path.stat().st_mtime_ns == written["a"]


def test_a_killed_run_resumes_with_the_weights_of_an_uninterrupted_one(monkeypatch, tmp_path):
    def fit(storage):
        tasks = [ToyTask("a", scores=(0.9, 0.5, 0.7, 0.6)), ToyTask("b", scores=(0.4,) * 4)]
        return {k: m.path for k, m in train_models(tasks, _settings(), storage, "run").items()}

    for kill_after in (2, 4, 6):  # mid-model, at a model's end, mid the second
        assert_resume_is_exact(monkeypatch, fit, tmp_path / str(kill_after), "run", kill_after)


def test_checkpoints_are_due_at_a_models_end_and_every_so_many_seconds(tmp_path):
    worker = Worker(_settings(checkpoint_every_s=60.0), tmp_path)
    start = time.monotonic()
    assert not worker.due(finished=False, now=start + 59.0)  # mid-model, within the interval
    assert worker.due(finished=True, now=start + 1.0)  # a finished model always
    assert worker.due(finished=False, now=start + 60.0)  # the interval has passed
    assert Worker(_settings(), tmp_path).due(finished=False)  # 0: every epoch


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_autocasts_the_training_steps(tmp_path, precision):
    task = ToyTask(conv=True)
    object.__setattr__(task, "seen_dtypes", [])
    trained = train_models([task], _settings(precision=precision), tmp_path, "run")["toy"]
    expected = torch.bfloat16 if precision == "bf16" else torch.float16
    assert set(task.seen_dtypes) == {expected}  # the model ran in reduced precision
    weights, meta = load_model(trained.path)
    assert meta["precision"] == precision
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_channels_last_lays_out_the_model_and_its_inputs(tmp_path):
    worker = Worker(_settings(channels_last=True), tmp_path)
    x = worker.model_input(torch.zeros(2, 1, 4, 4))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert worker.model_input(torch.zeros(2, 6)).is_contiguous()  # not an image: as it was
    trained = train_models([ToyTask(conv=True)], _settings(channels_last=True), tmp_path, "r")
    assert trained["toy"].path.exists()


def test_settings_and_model_files_are_checked(tmp_path):
    with pytest.raises(ValueError, match="best metric"):
        _settings(best="loss")
    with pytest.raises(ValueError, match="precision"):
        _settings(precision="fp8")
    path = tmp_path / "old.pt"
    torch.save({"weight": torch.zeros(2)}, path)  # a bare state dict: another layout
    with pytest.raises(ValueError, match=f"format {MODEL_FORMAT}"):
        load_model(path)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    "changes",
    [
        {"optimizer": "adamw", "weight_decay": 0.01},
        {"optimizer": "sgd"},
        {"schedule": "cosine", "warmup_epochs": 1},
    ],
)
def test_a_model_chooses_its_optimizer_and_schedule_and_still_resumes_exactly(
    monkeypatch, tmp_path, changes
):
    def fit(storage):
        tasks = [ToyTask("a", scores=(0.9, 0.5, 0.7, 0.6))]
        settings = _settings(**changes)
        return {k: m.path for k, m in train_models(tasks, settings, storage, "run").items()}

    assert_resume_is_exact(monkeypatch, fit, tmp_path, "run", kill_after=2)
    from usv_ray.runner import training_log

    rates = [row["lr"] for row in training_log(tmp_path / "uninterrupted", "run")]
    train = _settings(**changes).train
    assert rates == pytest.approx([1e-2 * lr_factor(train, epoch) for epoch in range(4)])


def test_the_schedules_rates_by_epoch():
    constant = TrainConfig(epochs=4, lr=1.0)
    assert [lr_factor(constant, e) for e in range(4)] == [1.0] * 4
    warm = TrainConfig(epochs=6, lr=1.0, warmup_epochs=2, schedule="cosine")
    factors = [lr_factor(warm, e) for e in range(6)]
    assert factors[0] == pytest.approx(0.1) and factors[1] == pytest.approx(0.55)
    assert factors[2] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.01)
    assert all(a > b for a, b in itertools.pairwise(factors[2:]))  # decreasing


class NanTask(ToyTask):
    """A model whose loss turns NaN in its second epoch."""

    def loss(self, model, batch, worker, generator):
        loss, count = super().loss(model, batch, worker, generator)
        return (loss * math.nan if model.training and _epoch(model) == 1 else loss), count


def _epoch(model) -> int:
    model.batches = getattr(model, "batches", 0) + 1
    return (model.batches - 1) // 5  # ToyTask has five batches an epoch


def test_a_non_finite_loss_stops_the_run_naming_the_model_and_epoch(tmp_path):
    with pytest.raises(TrainingError, match=r"toy: the training loss of epoch 2, batch 1 is nan"):
        train_models([NanTask()], _settings(), tmp_path, "run")


def test_a_best_metric_the_validation_does_not_report_is_an_error(tmp_path):
    with pytest.raises(TrainingError, match="chosen by val_acc, which its validation does not"):
        train_models([ToyTask(scores=(0.5,) * 4)], _settings(best="val_acc"), tmp_path, "run")
