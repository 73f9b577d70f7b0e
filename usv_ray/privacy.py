"""Keyed pseudonyms: raw patient identifiers never leave the ingest task that reads them.

``patient_key`` is HMAC-SHA256 of the patient ID under a secret key; every other name that
could carry an identifier (study, nodule and tracklet IDs, video IDs derived from paths) is
keyed the same way, with a domain tag so that equal strings of different kinds differ.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from pathlib import Path

from usv_ray.config import PrivacyConfig
from usv_ray.errors import UsvRayError

log = logging.getLogger(__name__)

SECRET_ENV = "USV_RAY_SECRET"
# Public on purpose: it is in this source file. Only for the synthetic demo archive.
DEV_KEY = b"usv-ray development key: synthetic data only"
KEY_HEX_CHARS = 32  # 128 bits of the HMAC: collisions are out of reach for any archive


class MissingKeyError(UsvRayError, RuntimeError):
    """No pseudonymisation key is configured."""


def load_key(cfg: PrivacyConfig) -> bytes:
    """The HMAC key: ``USV_RAY_SECRET``, else ``privacy.key_file``, else (demo) the dev key."""
    secret = os.environ.get(SECRET_ENV)
    if secret:
        return secret.encode()
    if cfg.key_file:
        path = Path(cfg.key_file).expanduser()
        if not path.is_file():
            raise MissingKeyError(f"privacy.key_file {path} does not exist")
        key = path.read_bytes().strip()
        if len(key) < 16:
            raise MissingKeyError(f"privacy.key_file {path} holds fewer than 16 bytes")
        return key
    if cfg.dev_key:
        log.warning(
            "using the public development key for patient pseudonyms: fine for the synthetic "
            "demo, never for real patients (set %s or privacy.key_file)",
            SECRET_ENV,
        )
        return DEV_KEY
    raise MissingKeyError(
        f"no pseudonymisation key: set {SECRET_ENV} or privacy.key_file "
        "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))' > key`), "
        "or privacy.dev_key=true for synthetic data"
    )


KEYING_NAME = "keying.json"  # in a data folder: which key keyed it, never the key
CHECK_TEXT = "usv-ray: which key keyed this folder"


class KeyMismatchError(UsvRayError, ValueError):
    """A data folder keyed with another key than the one given: its patients would get a
    second set of patient keys."""


def key_kind(key: bytes, cfg: PrivacyConfig) -> tuple[str, str]:
    """(the kind of ``key``: ``development`` or ``private``, where it came from)."""
    if key == DEV_KEY:
        return "development", "privacy.dev_key"
    return "private", SECRET_ENV if os.environ.get(SECRET_ENV) else "privacy.key_file"


def key_check(key: bytes) -> str:
    """A keyed check value of ``key``: the same key always gives the same value, and the
    value says nothing of the key (an HMAC of a fixed text), so a folder can record it."""
    return keyed_hash(key, "check", CHECK_TEXT)


def _read_keying(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise KeyMismatchError(
            f"{path} is damaged ({exc}): it says which key keyed the folder's patients; "
            "restore it from a backup, or ingest into a new --out folder"
        ) from exc
    return record if isinstance(record, dict) else None


def check_keying(folder: str | Path, cfg: PrivacyConfig, key: bytes) -> None:
    """Refuse ``key`` for a data folder that another key keyed (its ``keying.json``).

    Raises:
        KeyMismatchError: naming the remedy; nothing has been read or written.
    """
    path = Path(folder) / KEYING_NAME
    record = _read_keying(path)
    if record is None:
        return
    kind, source = key_kind(key, cfg)
    kinds = set(record.get("keys", []))
    remedy = (
        "run with the key that keyed it (USV_RAY_SECRET or privacy.key_file), or ingest into "
        "a new --out folder: under two keys one patient gets two patient_keys"
    )
    if len(kinds) > 1:
        raise KeyMismatchError(
            f"{Path(folder)} holds patients keyed with both the development key and a private "
            "key: re-ingest its videos into a new --out folder with the private key alone"
        )
    if kinds and kind not in kinds:
        raise KeyMismatchError(
            f"{Path(folder)} was keyed with the {next(iter(kinds))} key, and this run has the "
            f"{kind} key (from {source}): {remedy}"
        )
    if record.get("check") not in (None, key_check(key)):
        raise KeyMismatchError(
            f"{Path(folder)} was keyed with another {kind} key than this run's (from "
            f"{source}; the folder's check value differs): {remedy}"
        )


def record_keying(out: str | Path, cfg: PrivacyConfig, key: bytes) -> dict:
    """Record in ``out/keying.json`` which key keys the folder's patients: its kind (the
    public development key or a private one), where it came from, and its keyed check value
    (:func:`key_check`), never the key. A folder of another key is refused
    (:func:`check_keying`), so a folder never mixes two keys; a record an older usv_ray
    wrote, without a check value, gets this key's, with a warning.

    Raises:
        KeyMismatchError: another key keyed the folder.
    """
    from usv_ray.io import write_json

    check_keying(out, cfg, key)
    path = Path(out) / KEYING_NAME
    previous = _read_keying(path) or {}
    if previous and "check" not in previous:
        log.warning(
            "%s records no check value of its key (an older usv_ray wrote it): recording this "
            "run's; make sure it is the key that keyed the folder's patients",
            path,
        )
    kind, source = key_kind(key, cfg)
    record = {
        "keys": [kind],
        "sources": sorted({*previous.get("sources", []), source}),
        "check": key_check(key),
    }
    if record != previous:
        write_json(record, path)
    return record


def keyed_hash(key: bytes, kind: str, *parts: str) -> str:
    """HMAC-SHA256 of ``parts`` under ``key``, tagged with ``kind``; 32 hex characters."""
    message = "\x1f".join((kind, *parts)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:KEY_HEX_CHARS]


def patient_key(key: bytes, patient_id: str) -> str:
    """The pseudonym of a patient: the only patient reference any table holds."""
    return keyed_hash(key, "patient", patient_id.strip())
