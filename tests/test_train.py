import time
import warnings

import numpy as np
import pytest
import torch

from usv_ray.train import EpochReporter, cpu_weights, numpy_collate, seed_epoch


def test_a_checkpoint_is_due_at_a_models_end_and_every_so_many_seconds():
    report = EpochReporter(every_s=60.0)
    start = time.monotonic()
    assert not report.due(finished=False, now=start + 59.0)  # mid-model, within the interval
    assert report.due(finished=True, now=start + 1.0)  # a finished model always
    assert report.due(finished=False, now=start + 60.0)  # the interval has passed
    assert EpochReporter(every_s=0.0).due(finished=False)  # 0: every epoch


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
