"""The sweep engine: a :class:`Target` in, its results table and ``best.yaml`` out.

It knows no target: :mod:`usv_ray.tune.targets` builds them (and imports this module,
never the reverse). A target's points are either Ray Tune trials that train
(:class:`TuneTrials`: the Tuner, new or restored, its resources and ASHA) or a plain loop
in the driver (:class:`GridLoop`: no training, milliseconds a point, as tau is).

Output layout under ``out``::

    tune.json               the target and settings this folder was made from
    sweep/                  the Ray Tune experiment (``Tuner.restore`` resumes it)
    runs/                   the trials' Ray Train runs, named ``<target>-<trial id>``
    results.csv, results.md one row per trial: its values, metrics and how it ended
    best.yaml               the full config with the best trial's values

(``sweep/`` and ``runs/`` only for Tune trials.) A rerun on the same ``out`` restores the
experiment: finished trials are kept, unfinished ones go on (their Train runs resume from
their last checkpoints); a plain loop evaluates its points again. A folder made for
another target or other settings is refused rather than mixed.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml

from usv_ray.config import Config, load_config, to_dict
from usv_ray.errors import UsvRayError
from usv_ray.io import atomic_path
from usv_ray.layout import TuneFolder, holds

log = logging.getLogger(__name__)


class TuneError(UsvRayError, ValueError):
    """A sweep that cannot run as asked (no data for the target, an impossible space)."""


@dataclass(frozen=True)
class TuneSummary:
    out: Path
    target: str
    metric: str  # what the best trial is best at
    mode: str  # "min" or "max"
    best: dict[str, Any]  # dotted config key -> the best trial's value
    best_value: float  # its metric
    table: pd.DataFrame  # one row per trial, best first
    best_config: Path  # best.yaml
    seconds: float

    def text(self) -> str:
        """What the command prints: the results in short and where they are."""
        from usv_ray.evaluate.tables import to_markdown

        best = ", ".join(f"{key}={value:.4g}" for key, value in self.best.items())
        return (
            f"tune {self.target}: {len(self.table)} trials in {self.seconds:.0f} s; best "
            f"{best} ({self.metric} {self.best_value:.4g})\n"
            f"{to_markdown(self.table, float_format='{:.4g}')}\n"
            f"  results: {self.out / 'results.md'} (and .csv)\n"
            f"  best config: {self.best_config} (use it as --config)"
        )


def _replace(section: Any, path: list[str], value: Any) -> Any:
    """``section`` (a config dataclass) with the field at ``path`` set to ``value``, which
    keeps the field's type (a Tune sample such as numpy's int64 becomes a plain int)."""
    name, rest = path[0], path[1:]
    current = getattr(section, name)
    if rest:
        return dataclasses.replace(section, **{name: _replace(current, rest, value)})
    plain = value.item() if hasattr(value, "item") else value  # numpy scalars too
    return dataclasses.replace(
        section, **{name: plain if current is None else type(current)(plain)}
    )


def apply_params(cfg: Config, params: Mapping[str, Any]) -> Config:
    """``cfg`` with each dotted key of ``params`` (``classify.cnn.lr``) set to its value."""
    for dotted, value in params.items():
        cfg = _replace(cfg, dotted.split("."), value)
    return cfg


def param_value(cfg: Config, dotted: str) -> Any:
    """The value of a dotted key of ``cfg``, as plain YAML data."""
    value: Any = to_dict(cfg)
    for part in dotted.split("."):
        value = value[part]
    return value


def run_name(target: str) -> str:
    """The Train run of this Tune trial: the same name when a restored trial resumes."""
    from ray import tune

    return f"{target}-{tune.get_context().get_trial_id()}"


def write_best_config(cfg: Config, best: Mapping[str, Any], path: Path) -> Path:
    """Write the full config with ``best`` applied, checked by :func:`load_config`."""
    tree = to_dict(apply_params(cfg, best))
    header = "".join(f"#   {key}: {value}\n" for key, value in best.items())
    text = f"# usv-ray tune: the best trial's values\n{header}" + yaml.safe_dump(
        tree, sort_keys=False
    )
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        load_config(tmp)  # a config that the other commands refuse is never written
    return path


def write_results(table: pd.DataFrame, out: Path) -> tuple[Path, Path]:
    """``results.md`` (4 significant digits: learning rates stay readable) and
    ``results.csv`` (full precision), each written atomically."""
    from usv_ray.evaluate.tables import to_markdown

    md, csv = out / "results.md", out / "results.csv"
    with atomic_path(md) as tmp:
        tmp.write_text(to_markdown(table, float_format="{:.4g}") + "\n", encoding="utf-8")
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    return md, csv


def claim(out: Path, target: Target) -> bool:
    """Claim ``out`` for this sweep (True: resuming one made with the same settings), as
    every stage claims its folder (:class:`usv_ray.layout.StageRun`)."""
    from usv_ray.layout import StageRun

    inputs = {"target": target.name, **target.inputs}
    run = StageRun(TuneFolder(out).record, target.sections, inputs=inputs, data_folder=target.data)
    return run.claim()


def best_row(table: pd.DataFrame, metric: str, mode: str) -> pd.Series:
    """The best row by ``metric`` (NaN never wins; ties: the earlier row)."""
    scores = pd.to_numeric(table[metric], errors="coerce")
    if scores.notna().sum() == 0:
        raise TuneError(f"no trial reported a finite {metric}: see {table.get('status')}")
    return table.loc[scores.idxmin() if mode == "min" else scores.idxmax()]


def release_orphaned_placement_groups() -> int:
    """Remove the placement groups whose creator actor is dead; returns how many.

    Ray keeps a placement group made by a (non-detached) actor until the job ends, even
    after the actor is gone. When ASHA stops a trial, Tune ends the trial's actor and with
    it the Train controller it started; Train's own PlacementGroupCleaner notices that
    only through the dashboard's State API, so on a local Ray without the dashboard the
    workers' placement group stays reserved until the sweep's process exits. After a few
    stopped trials no CPU is left and the next Train run times out (ray issue 54305, PR
    58515). A group whose creator is dead can never be used again: removing it is what Ray
    does itself at the end of the job. The creator's state is only in the GCS table (no
    public API returns it), read here through Ray's internal state accessor.
    """
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    removed = 0
    try:
        table = state._connect_and_get_accessor().get_placement_group_table()
    except Exception as exc:  # an internal API: never let it break a sweep
        log.debug("cannot read the placement group table: %s", exc)
        return 0
    for raw in table:
        group = gcs_pb2.PlacementGroupTableData.FromString(raw)
        alive = group.state != gcs_pb2.PlacementGroupTableData.REMOVED
        # a driver's groups (Tune's own, for its trials) have no creator actor and count
        # as "creator actor dead": they live as long as the driver
        by_actor = not ray.ActorID(group.creator_actor_id).is_nil()
        if alive and by_actor and group.creator_actor_dead and not group.is_detached:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(group.placement_group_id)))
            removed += 1
    if removed:
        log.info("released %d placement group(s) of stopped trials", removed)
    return removed


def _orphan_callback() -> Any:
    """A Tune callback that releases stopped trials' placement groups as the sweep goes."""
    from ray import tune

    class ReleaseOrphans(tune.Callback):
        """Every second of the sweep's loop and after every trial (see
        :func:`release_orphaned_placement_groups`)."""

        def __init__(self) -> None:
            self._last = 0.0

        def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
            if time.monotonic() - self._last >= 1.0:
                self._last = time.monotonic()
                release_orphaned_placement_groups()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
            release_orphaned_placement_groups()

    return ReleaseOrphans()


@dataclass(frozen=True)
class TuneTrials:
    """A target's points as Ray Tune trials, each launching a stage's Ray Train run."""

    trainable: Callable[[dict], None]  # a Tune function (``tune.with_parameters`` applied)
    # ASHA's time attribute, counted from 0 as the stage reports it; None: a trial reports
    # once (LSTMs train in one go), so there is nothing to stop early
    time_attr: str | None
    epochs: int  # the stage's epochs per trial
    cpus: float  # CPUs of one trial's Train workers together
    gpus: float
    # the trial's own actor trains (without Ray Train): it reserves ``cpus`` itself
    in_trial: bool = False

    @classmethod
    def of(
        cls,
        trainable: Callable[[dict], None],
        time_attr: str | None,
        epochs: int,
        workers: int,
        cpus_per_worker: float,
        use_gpu: bool,
    ) -> TuneTrials:
        """The trials of a stage that trains with ``workers`` Ray Train workers of
        ``cpus_per_worker`` CPUs (and a GPU each with ``use_gpu``), or in the trial's own
        actor for ``workers: 0`` (on its CPUs: the in-process runner uses no GPU)."""
        return cls(
            trainable,
            time_attr,
            epochs,
            max(workers, 1) * cpus_per_worker,
            workers if use_gpu else 0,
            in_trial=workers == 0,
        )


@dataclass(frozen=True)
class GridLoop:
    """A target's points evaluated one after another in the driver, without Ray: for a
    parameter that needs no training (a loop took 0.08 s where Tune took 25 s)."""

    evaluate: Callable[[dict[str, Any]], dict[str, Any]]  # one point -> its metrics
    # the best row's position from the metric column (a tie rule); None: the first best
    pick: Callable[[pd.Series], int] | None = None
    names: dict[str, str] = field(default_factory=dict)  # table column of a dotted key


@dataclass(frozen=True)
class Target:
    """One sweep: the config keys it varies, how its points run, how they rank."""

    name: str
    # dotted config key -> Tune domain or ``tune.grid_search`` (a GridLoop: grids only)
    param_space: dict[str, Any]
    metric: str  # a metric every point reports (last)
    mode: Literal["min", "max"]
    columns: tuple[str, ...]  # metrics shown in the results table
    sections: dict[str, Any]  # the config sections its results depend on (for claim)
    inputs: dict[str, Any]  # and what else: its videos or tracklets, its grid
    data: Path  # the folder it reads (recorded in tune.json, not part of the claim)
    trials: TuneTrials | GridLoop
    # writes what the trials read into ``out`` (variable_max: the capped caches); called
    # once the folder is claimed, so a folder of another sweep is never written to
    prepare: Callable[[], None] | None = None
    # called with the best point (dotted key -> value) and its metric once best.yaml is
    # written (tau: records the tau in the re-ID bundle it was swept for)
    finish: Callable[[dict[str, Any], float], None] | None = None


def max_concurrent(cfg: Config, cpus: float, gpus: float) -> int:
    """Trials at once: ``tune.max_concurrent``, or as many whole Train runs as the cluster
    fits while one CPU stays free for Ray Data and the drivers (1 on a 2-CPU laptop).

    A Train V2 run reserves its workers in its own placement group, apart from the Tune
    trial's, so the trial cannot hold them for it; limiting concurrency to what the
    cluster fits is how the Ray docs keep trials from starving each other.
    """
    import ray

    total = ray.cluster_resources()
    if cpus > total.get("CPU", 0) or gpus > total.get("GPU", 0):
        raise TuneError(
            f"one trial's Train workers need {cpus:g} CPUs and {gpus:g} GPUs, the cluster "
            f"has {total.get('CPU', 0):g} and {total.get('GPU', 0):g}: lower the stage's "
            "workers or cpus_per_worker"
        )
    if cfg.tune.max_concurrent is not None:
        if cfg.tune.max_concurrent < 1:
            raise TuneError(f"tune.max_concurrent must be >= 1, got {cfg.tune.max_concurrent}")
        return cfg.tune.max_concurrent
    fits = math.floor(max(total.get("CPU", 0) - 1, cpus) / cpus) if cpus > 0 else 1 << 30
    if gpus > 0:
        fits = min(fits, math.floor(total.get("GPU", 0) / gpus))
    return max(1, fits)


def driver_resources(cfg: Config) -> dict[str, float]:
    """What one trial's actor (the Train driver) reserves: memory, and optionally a share
    of a custom resource that only safe (non-preemptible) nodes offer."""
    resources: dict[str, float] = {"memory": float(cfg.tune.driver_memory_mb * 2**20)}
    if cfg.tune.driver_resource:
        resources[cfg.tune.driver_resource] = 0.01
    return resources


def _status(result: Any, epoch: float, trials: TuneTrials) -> str:
    if result.error is not None:
        return f"error: {type(result.error).__name__}"
    if trials.time_attr is not None and not math.isnan(epoch) and epoch + 1 < trials.epochs:
        return f"stopped by ASHA after {int(epoch) + 1} epochs"
    return "done"


def _table(results: Any, target: Target, trials: TuneTrials) -> pd.DataFrame:
    rows = []
    for result in results:
        metrics = result.metrics or {}
        epoch = float(metrics.get("epoch", math.nan))
        row = {"trial": metrics.get("trial_id", "")}  # Tune adds it to every result
        row.update({key: (result.config or {}).get(key) for key in target.param_space})
        row.update({column: metrics.get(column, math.nan) for column in target.columns})
        row["status"] = _status(result, epoch, trials)
        rows.append(row)
    table = pd.DataFrame(rows)
    # best first; ties (common on small validation sets) in trial order, on every rerun
    return table.sort_values(
        [target.metric, "trial"],
        ascending=[target.mode == "min", True],
        na_position="last",
        kind="stable",
    )


def fit_sweep(
    cfg: Config, target: Target, trials: TuneTrials, out: Path, callbacks: Sequence[Any] = ()
) -> pd.DataFrame:
    """Run (or resume) the Tune experiment of ``target`` in ``out``; the results table,
    best first."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    path = TuneFolder(out).experiment.resolve()
    resources = driver_resources(cfg) | ({"CPU": trials.cpus} if trials.in_trial else {})
    trainable = tune.with_resources(trials.trainable, resources)
    concurrent = max_concurrent(cfg, trials.cpus, trials.gpus)
    if tune.Tuner.can_restore(path):
        log.info("tune: resuming the sweep in %s", path)
        # errored trials go on from their Train runs' last checkpoints
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
    else:
        scheduler = None
        if trials.time_attr is not None:
            t = cfg.tune
            scheduler = ASHAScheduler(
                time_attr=trials.time_attr,
                max_t=max(trials.epochs - 1, t.grace_period),  # the last epoch's index
                grace_period=t.grace_period,
                reduction_factor=t.reduction_factor,
            )
        # with no scheduler the metric is only used to rank trials at the end: the LSTM's
        # own per-model reports (train loss) come before the trial's validation report
        tuner = tune.Tuner(
            trainable,
            param_space=target.param_space,
            tune_config=tune.TuneConfig(
                metric=target.metric if scheduler else None,
                mode=target.mode if scheduler else None,
                num_samples=cfg.tune.num_samples,
                scheduler=scheduler,
                # Tune ignores max_concurrent_trials next to a search_alg: limit it here
                search_alg=BasicVariantGenerator(
                    random_state=cfg.tune.seed, max_concurrent=concurrent
                ),
            ),
            run_config=tune.RunConfig(
                name=TuneFolder(out).experiment.name,
                storage_path=str(path.parent),
                callbacks=[_orphan_callback(), *callbacks],
                verbose=1,
            ),
        )
    log.info(
        "tune %s: %s, up to %d trial(s) at once%s",
        target.name,
        ", ".join(target.param_space),
        concurrent,
        " with ASHA" if trials.time_attr else "",
    )
    results = tuner.fit()
    release_orphaned_placement_groups()  # the last stopped trial's, if any
    check_finished(results, expected_trials(target.param_space, cfg.tune.num_samples), out)
    return _table(results, target, trials)


def expected_trials(param_space: Mapping[str, Any], num_samples: int) -> int:
    """Trials a sweep makes: ``num_samples`` times every combination of its grids."""
    count = num_samples
    for value in param_space.values():
        if isinstance(value, dict) and "grid_search" in value:
            count *= len(value["grid_search"])
    return count


def check_finished(results: Any, expected: int, out: Path) -> None:
    """Raise when Tune returned before every trial ended (Ctrl+C, a stop signal): its
    state is saved, and the same command on the same ``out`` goes on from there.

    Trials are created as slots free up, so an interrupted sweep may not have created
    all of its ``expected`` trials yet.
    """
    unfinished = expected - results.num_terminated - results.num_errors
    if unfinished > 0:
        raise TuneError(
            f"the sweep was interrupted with {unfinished} trial(s) unfinished; its state is "
            f"saved in {TuneFolder(out).experiment}: run the same command again to resume it"
        )


def grid_points(param_space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the grids of ``param_space`` (``tune.grid_search`` values, or
    a constant), the last key varying fastest."""
    values = []
    for key, value in param_space.items():
        if isinstance(value, dict) and "grid_search" in value:
            values.append(list(value["grid_search"]))
        elif isinstance(value, dict) or callable(getattr(value, "sample", None)):
            raise TuneError(f"{key}: a plain loop sweeps grids, not {value!r}")
        else:
            values.append([value])
    return [dict(zip(param_space, point, strict=True)) for point in itertools.product(*values)]


def loop_sweep(target: Target, loop: GridLoop) -> pd.DataFrame:
    """Evaluate every point of ``target``'s grid in order; the results table, one row a
    point in grid order."""
    points = grid_points(target.param_space)
    log.info("tune %s: %d point(s) of %s", target.name, len(points), ", ".join(target.param_space))
    rows = []
    for point in points:
        metrics = loop.evaluate(point)
        row = {loop.names.get(key, key): value for key, value in point.items()}
        row.update({column: metrics.get(column, math.nan) for column in target.columns})
        rows.append({**row, "status": "done"})
    return pd.DataFrame(rows)


@holds("tune")
def run_target(
    cfg: Config, target: Target, out: str | Path, callbacks: Sequence[Any] = ()
) -> TuneSummary:
    """Sweep ``target`` into ``out``: claim the folder, run (or resume) its points, write
    ``results.{csv,md}`` and ``best.yaml``; ``callbacks`` are extra Tune callbacks.

    One run at a time in ``out`` (:func:`usv_ray.layout.hold`): another run's lock
    refuses this one, or makes it wait (``lock.busy``).
    """
    from usv_ray.runtime import ensure_ray
    from usv_ray.tune.report import describe

    started = time.perf_counter()
    out = Path(out)
    claim(out, target)
    if target.prepare is not None:
        target.prepare()
    trials, names = target.trials, {}
    if isinstance(trials, GridLoop):
        table = loop_sweep(target, trials)
        names = trials.names
    else:
        ensure_ray(cfg.ray)
        table = fit_sweep(cfg, target, trials, out, callbacks)
    write_results(table, out)
    row = best_row(table, target.metric, target.mode)  # raises when no value is finite
    if isinstance(trials, GridLoop) and trials.pick is not None:
        scores = pd.to_numeric(table[target.metric], errors="coerce")
        row = table.iloc[trials.pick(scores)]
    best = {key: row[names.get(key, key)] for key in target.param_space}
    best_config = write_best_config(cfg, best, out / "best.yaml")
    chosen = apply_params(cfg, best)
    best = {key: param_value(chosen, key) for key in target.param_space}  # as in the YAML
    if target.finish is not None:
        target.finish(best, float(row[target.metric]))
    describe(out, target.data)
    return TuneSummary(
        out,
        target.name,
        target.metric,
        target.mode,
        best,
        float(row[target.metric]),
        table.reset_index(drop=True),
        best_config,
        time.perf_counter() - started,
    )
