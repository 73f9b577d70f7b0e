"""The local Ray's worker setup."""

import logging

import pytest

from usv_ray.runtime import actor_cpus, quiet_local_workers


@pytest.mark.ray
def test_an_inference_actor_leaves_a_cpu_to_the_reads_that_feed_it(ray_session):
    assert ray_session.cluster_resources()["CPU"] == 2
    assert actor_cpus(2) == 1 and actor_cpus(8) == 1
    assert actor_cpus(1) == 1 and actor_cpus(0.5) == 0.5


def test_quiet_local_workers_silences_the_placement_group_cleaner_warning():
    # The logger Ray Train's cleaner really logs with: a Ray upgrade that moves it fails here.
    from ray.train.v2._internal.execution.controller import placement_group_cleaner

    cleaner = placement_group_cleaner.logger
    before = cleaner.level
    try:
        quiet_local_workers()
        assert not cleaner.isEnabledFor(logging.WARNING)
        assert cleaner.isEnabledFor(logging.ERROR)
    finally:
        cleaner.setLevel(before)
