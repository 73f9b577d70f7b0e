"""The index's error rows (``errors.parquet``): what a run could not index, and why.

Three kinds: ``bad_tracklet`` (a clip that cannot be read: not retried), ``damaged_shard``
(a tracklets shard that is missing or not the file ingest wrote: retried once ingest
writes it again) and ``patient_failed`` (a patient whose update failed: retried on the
next run).
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from usv_ray.schemas import ERRORS

DAMAGED = "damaged_shard"  # a shard that is missing or not what ingest wrote: retried


def _rows(bad: pd.DataFrame, failed: dict[str, str], unreadable: dict[str, str]) -> list:
    """The run's error rows: tracklets without an embedding (a clip that cannot be read, not
    retried; one of a damaged shard, retried once ingest writes it again), shards that
    cannot be read at all, and patients that failed."""
    rows = [
        {
            "source": r.tracklet_id,
            "video_id": r.video_id,
            "stage": "index",
            "kind": DAMAGED if r.error.startswith(f"{DAMAGED}: ") else "bad_tracklet",
            "message": r.error.removeprefix(f"{DAMAGED}: ")
            if r.error.startswith(f"{DAMAGED}: ")
            else f"patient {r.patient_key}: {r.error}",
        }
        for r in bad.itertuples(index=False)
    ]
    rows += [
        {
            "source": video_id,
            "video_id": video_id,
            "stage": "index",
            "kind": DAMAGED,
            "message": f"{why}: its tracklets are left out until ingest writes the shard again",
        }
        for video_id, why in sorted(unreadable.items())
    ]
    rows += [
        {
            "source": patient_key,
            "video_id": None,
            "stage": "index",
            "kind": "patient_failed",
            "message": f"patient {patient_key}: {message}; its nodules are left as they were "
            "(none on a first build or rebuild) and its new tracklets are retried on the next run",
        }
        for patient_key, message in sorted(failed.items())
    ]
    return rows


BAD = ["tracklet_id", "video_id", "patient_key", "error"]  # embed_new's rows without one


def errors_table(errors: pd.DataFrame) -> pa.Table:
    """The error rows as the table ``errors.parquet`` holds (:data:`ERRORS`)."""
    return pa.Table.from_pandas(errors, schema=ERRORS, preserve_index=False)


def error_frame(
    bad: pd.DataFrame,
    failed: dict[str, str],
    unreadable: dict[str, str],
    before: pd.DataFrame | None,
) -> pd.DataFrame:
    """The run's error rows (:func:`_rows`) and the ``bad_tracklet`` rows of the errors
    table ``before`` it (those are not retried, so their rows stay)."""
    kept = [] if before is None else before[before["kind"] == "bad_tracklet"].to_dict("records")
    return pd.DataFrame(_rows(bad, failed, unreadable) + kept, columns=ERRORS.names)
