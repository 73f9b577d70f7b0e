"""A sweep's section of the report: its results, one row per trial, and the best
configuration it found. Each sweep folder (``tune/<target>``) has its own section."""

from __future__ import annotations

from pathlib import Path

from usv_ray import sections
from usv_ray.layout import RunFolder, TuneFolder

TITLE = "Tuning sweep: {target}"
ORDER = RunFolder.part("tune").order
FIRST = ("results",)
TITLES = {
    "results": "Sweep results, one row per trial",
    "tau_interval": "The chosen tau, and the tau and F each patient resample would choose "
    "(2.5-97.5 percentiles)",
    "link": "The link model at its threshold, each validation patient clustered by a model "
    "fitted without it (folds of patients); F with its 95% interval over patient resamples",
}
BEST_TITLE = "Best configuration (a YAML the other commands accept with --config)"
# a sweep's columns depend on its target: its own names (no general headings), but for
# tau's pairwise scores
HEADINGS = {
    "results": {
        "precision": "Pairwise precision",
        "recall": "Pairwise recall",
        "f_score": "Pairwise F",
        "clusters": "Clusters",
        "status": "Status",
    },
    "tau_interval": {
        "tau": "tau",
        "f_score": "Pairwise F",
        "tau_low": "tau, 2.5%",
        "tau_high": "tau, 97.5%",
        "f_low": "F, 2.5%",
        "f_high": "F, 97.5%",
        "resamples": "Patient resamples",
        "tracklets": "Validation tracklets",
        "patients": "Validation patients",
    },
    "link": {
        "threshold": "P(same) at least",
        "precision": "Pairwise precision",
        "recall": "Pairwise recall",
        "f_score": "Pairwise F",
        "f_low": "F, 2.5%",
        "f_high": "F, 97.5%",
        "f_one_per_patient": "F, one nodule per patient",
        "folds": "Folds",
        "pairs": "Validation pairs",
        "same_pairs": "Of one nodule",
        "patients": "Validation patients",
    },
}


def describe(out: str | Path, data: str | Path | None = None) -> Path:
    """Write the sweep folder ``out``'s report section (``out/report.json``) from its
    results, best.yaml and record (its own ``tune.json``, else the one of the folder
    above); ``data``: the data folder it read, else the record's. Returns the path. A
    sweep calls it at the end, after best.yaml."""
    folder = TuneFolder(out)
    record = sections.stage_record(folder.record, folder.root)
    if record is None:  # one record for every sweep under tune/
        record = sections.stage_record(TuneFolder(folder.root.parent).record, folder.root)
    items: list[sections.Item] = [
        *sections.tables(folder.root, folder.root, TITLES, HEADINGS, FIRST, general=False)
    ]
    if folder.best.is_file():
        items.append(sections.Text(BEST_TITLE, folder.best.name))
    items += sections.figures(folder.root, folder.root, TITLES)
    section = sections.stage_section(
        TITLE.format(target=folder.root.name),
        ORDER,
        data=data,
        counts=None,
        record=record,
        items=items,
    )
    return sections.write_section(section, folder.report)
