"""The training runner's resume guarantee, checked the same way for every model.

``fit(storage)`` trains a stage's models with the in-process worker (``workers: 0``) under
``storage`` and returns their files by key. :func:`assert_resume_is_exact` runs it once
uninterrupted, and once killed right after its ``kill_after``-th report (the checkpoint of
that epoch written) and then run again: the rerun must resume, not restart, and end with
the very weights of the uninterrupted run.
"""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from usv_ray.runner import Worker, load_model, training_log


class Killed(Exception):
    """Stands for a crash of the process that trains."""


def assert_resume_is_exact(
    monkeypatch: pytest.MonkeyPatch,
    fit: Callable[[Path], dict[str, Path]],
    tmp_path: Path,
    name: str,
    kill_after: int,
) -> None:
    uninterrupted = fit(tmp_path / "uninterrupted")
    report, reports = Worker.report, []

    def crash_after(self, *args, **kwargs):
        report(self, *args, **kwargs)
        reports.append(args[0])
        if len(reports) == kill_after:
            raise Killed

    monkeypatch.setattr(Worker, "report", crash_after)
    with pytest.raises(Killed):
        fit(tmp_path / "killed")
    monkeypatch.setattr(Worker, "report", report)
    resumed = fit(tmp_path / "killed")

    log = training_log(tmp_path / "killed", name)
    first, second = (
        [row for row in log if row["attempt"] == 1],
        [r for r in log if r["attempt"] == 2],
    )
    assert len(first) == kill_after and second, "the rerun did not train what was left"
    assert (second[0]["model"], second[0]["epoch"]) != (first[0]["model"], 0), "it restarted"
    assert resumed.keys() == uninterrupted.keys()
    for key, path in uninterrupted.items():
        expected, meta = load_model(path)
        got, resumed_meta = load_model(resumed[key])
        assert got.keys() == expected.keys()
        different = [k for k in expected if not torch.equal(got[k], expected[k])]
        assert not different, f"{key}: resumed weights differ in {different[:3]}"
        assert resumed_meta["best_epoch"] == meta["best_epoch"]
