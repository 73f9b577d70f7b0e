"""What the benchmarks share: a measured figure and its target, the machine's load beside
every figure, a benchmark's command line over its sections, and throughput rates."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    """One measured figure and its target (``ok`` None: printed without a target)."""

    name: str
    value: str
    target: str
    ok: bool | None


def load() -> str:
    """The 1-minute load average against the core count, for every figure's context."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def summary(figures: list[Figure]) -> int:
    """Print the load and a table of ``figures``; the exit status: 1 when a target is missed."""
    print(f"{load()} at the end")
    width = max(len(figure.name) for figure in figures)
    print(f"\n{'figure':<{width}}  {'value':>8}  {'target':<6}  result")
    for figure in figures:
        result = "-" if figure.ok is None else ("PASS" if figure.ok else "MISSED")
        print(f"{figure.name:<{width}}  {figure.value:>8}  {figure.target:<6}  {result}")
    missed = [figure.name for figure in figures if figure.ok is False]
    if missed:
        print(f"missed: {', '.join(missed)}")
    return 1 if missed else 0


def run_sections(
    description: str,
    sections: dict[str, Callable[[argparse.Namespace, Path], list[Figure]]],
    quick: str,
) -> int:
    """The command line of a benchmark of ``sections`` (name -> section(args, a temporary
    folder)): ``--quick`` (``quick`` says what it trims), ``--gpu-only`` (the "gpu" section
    alone); the exit status of :func:`summary`."""
    import tempfile

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--gpu-only", action="store_true", help="the gpu section alone")
    args = parser.parse_args()
    print(f"{load()} (other work on the machine skews every figure)", flush=True)
    figures: list[Figure] = []
    for name, section in sections.items():
        if args.gpu_only and name != "gpu":
            continue
        print(f"--- {name}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            figures += section(args, Path(tmp))
    return summary(figures)


@dataclass(frozen=True)
class Rates:
    """Tracklets/s of one way of embedding: over the whole job, and after its first batch."""

    whole: float  # every tracklet over the whole time, start-up included
    steady: float  # the tracklets after the first batch over the time after it


def rates(n_items: int, started: float, first: float, first_rows: int, ended: float) -> Rates:
    """The rates of ``n_items`` done from ``started`` to ``ended``, ``first_rows`` of them
    by ``first`` (the end of the first batch)."""
    return Rates(n_items / (ended - started), (n_items - first_rows) / (ended - first))
