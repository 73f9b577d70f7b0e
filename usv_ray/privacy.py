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


KEYING_NAME = "keying.json"  # in ingest's output folder: which kind of key, never the key


def record_keying(out: str | Path, cfg: PrivacyConfig, key: bytes) -> dict[str, list[str]]:
    """Record in ``out/keying.json`` which kind of key keyed the patients: the public
    development key or a private one, and where it came from; never the key or anything
    computed from it. Reruns into the same folder add their kind, so a folder keyed with
    both says so (its patient keys do not match across the two)."""
    from usv_ray.io import write_json

    if key == DEV_KEY:
        kind, source = "development", "privacy.dev_key"
    else:
        kind = "private"
        source = SECRET_ENV if os.environ.get(SECRET_ENV) else "privacy.key_file"
    path = Path(out) / KEYING_NAME
    record: dict[str, list[str]] = {"keys": [], "sources": []}
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            record = {name: list(previous.get(name, [])) for name in record}
        except (OSError, json.JSONDecodeError):
            pass  # rewritten below from this run alone
    record = {
        "keys": sorted({*record["keys"], kind}),
        "sources": sorted({*record["sources"], source}),
    }
    write_json(record, path)
    return record


def keyed_hash(key: bytes, kind: str, *parts: str) -> str:
    """HMAC-SHA256 of ``parts`` under ``key``, tagged with ``kind``; 32 hex characters."""
    message = "\x1f".join((kind, *parts)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:KEY_HEX_CHARS]


def patient_key(key: bytes, patient_id: str) -> str:
    """The pseudonym of a patient: the only patient reference any table holds."""
    return keyed_hash(key, "patient", patient_id.strip())
