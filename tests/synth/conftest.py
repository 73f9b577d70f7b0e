"""Tiny archives shared by the night and truth tests: written once per session."""

from pathlib import Path

import pytest
from synth_archives import BASE, FULL, NIGHT

from usv_ray.synth import write_archive


@pytest.fixture(scope="session")
def base_archive(tmp_path_factory) -> Path:
    """BASE written: no night batch, every row annotated. Returns its manifest."""
    return write_archive(BASE, tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="session")
def night_archive(tmp_path_factory) -> Path:
    """NIGHT written: BASE plus a night batch. Returns the archive's manifest."""
    return write_archive(NIGHT, tmp_path_factory.mktemp("night"))


@pytest.fixture(scope="session")
def full_archive(tmp_path_factory) -> Path:
    """FULL written: NIGHT with half the rows annotated. Returns the archive's manifest."""
    return write_archive(FULL, tmp_path_factory.mktemp("full"))
