"""The local Ray's worker setup."""

import logging

from usv_ray.runtime import quiet_local_workers


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
