import time

from usv_ray.train import EpochReporter


def test_a_checkpoint_is_due_at_a_models_end_and_every_so_many_seconds():
    report = EpochReporter(every_s=60.0)
    start = time.monotonic()
    assert not report.due(finished=False, now=start + 59.0)  # mid-model, within the interval
    assert report.due(finished=True, now=start + 1.0)  # a finished model always
    assert report.due(finished=False, now=start + 60.0)  # the interval has passed
    assert EpochReporter(every_s=0.0).due(finished=False)  # 0: every epoch
