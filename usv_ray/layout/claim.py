"""How a stage claims its ``--out`` folder: one fingerprint policy for every stage (the
settings that change what it writes, :func:`usv_ray.config.output_settings`, with its
inputs and data), a record that resumes the same work and refuses other work, and the
stage's summary written into that record at its end (:class:`StageRun`)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def fingerprint(sections: Mapping[str, Any], inputs: Mapping[str, Any], data: str) -> str:
    """What a stage's results depend on: the :func:`~usv_ray.config.output_settings` of its
    config ``sections`` (name -> section), its ``inputs`` (e.g. the frame settings of its
    data) and ``data`` (a digest of the data it read). How it runs never counts."""
    from usv_ray.config import output_settings

    settings = {name: output_settings(section) for name, section in sections.items()}
    text = json.dumps([settings, dict(inputs), data], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def digest_rows(rows: Iterable[Sequence[Any]]) -> str:
    """A digest of a table's identifying rows (e.g. video_id, patient_key, label)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update((",".join(map(str, row)) + ";").encode())
    return digest.hexdigest()


class StageRun:
    """A stage's claim on its output folder, and its record (``<stage>.json``).

    ``claim()`` fingerprints the settings that change the output (:func:`fingerprint`):
    a new folder gets the record; a folder claimed with the same fingerprint is resumed;
    one claimed with another is refused (:class:`~usv_ray.io.FolderClaimed`), never mixed.
    ``finish(summary)`` writes the stage's summary and time into the record.
    """

    def __init__(
        self,
        record: Path,
        sections: Mapping[str, Any],
        *,
        data: str = "",
        inputs: Mapping[str, Any] | None = None,
        data_folder: Path | None = None,
    ) -> None:
        self.record = Path(record)
        self.sections = dict(sections)
        self.inputs = dict(inputs or {})
        self.data_folder = data_folder
        self.fingerprint = fingerprint(self.sections, self.inputs, data)
        self.started = time.perf_counter()

    def _content(self) -> dict[str, Any]:
        from usv_ray.config import to_dict

        content: dict[str, Any] = {"fingerprint": self.fingerprint}
        content.update({name: to_dict(section) for name, section in self.sections.items()})
        if self.inputs:
            content["inputs"] = self.inputs
        if self.data_folder is not None:
            content["data"] = str(Path(self.data_folder).resolve())
        return content

    def claim(self) -> bool:
        """Claim the folder; True when this resumes work of the same fingerprint.

        Raises:
            FolderClaimed: the folder holds results made with other settings or data.
        """
        from usv_ray.io import FolderClaimed, write_json

        if self.record.exists():
            try:
                found = json.loads(self.record.read_text()).get("fingerprint")
            except (OSError, json.JSONDecodeError) as exc:
                raise FolderClaimed(
                    f"{self.record} is damaged ({exc}); use a new --out (or delete it)"
                ) from exc
            if found != self.fingerprint:
                raise FolderClaimed(
                    f"{self.record.parent} holds results made with other settings or data; use "
                    "a new --out (or delete it) rather than mixing the two"
                )
            log.info("resuming the work in %s", self.record.parent)
            return True
        write_json(self._content(), self.record)
        return False

    def finish(self, summary: Mapping[str, Any] | None = None) -> float:
        """Write the record with the stage's ``summary`` and its time; returns the seconds."""
        from usv_ray.io import write_json

        seconds = time.perf_counter() - self.started
        content = {**self._content(), "seconds": seconds}
        if summary:
            content["summary"] = json.loads(json.dumps(summary, default=str))
        write_json(content, self.record)
        return seconds
