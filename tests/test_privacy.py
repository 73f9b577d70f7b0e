import pytest

from usv_ray.config import PrivacyConfig
from usv_ray.privacy import DEV_KEY, MissingKeyError, keyed_hash, load_key, patient_key


def test_key_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("USV_RAY_SECRET", raising=False)
    with pytest.raises(MissingKeyError, match="USV_RAY_SECRET"):
        load_key(PrivacyConfig())
    assert load_key(PrivacyConfig(dev_key=True)) == DEV_KEY
    key_file = tmp_path / "key"
    key_file.write_text("0123456789abcdef0123\n")
    assert load_key(PrivacyConfig(key_file=str(key_file), dev_key=True)) == b"0123456789abcdef0123"
    key_file.write_text("short")
    with pytest.raises(MissingKeyError, match="fewer than 16"):
        load_key(PrivacyConfig(key_file=str(key_file)))
    with pytest.raises(MissingKeyError, match="does not exist"):
        load_key(PrivacyConfig(key_file=str(tmp_path / "nope")))
    monkeypatch.setenv("USV_RAY_SECRET", "from-the-environment")
    assert load_key(PrivacyConfig(key_file=str(key_file))) == b"from-the-environment"


def test_patient_key_is_keyed_stable_and_opaque():
    a = patient_key(b"k1" * 8, "MRN0012345")
    assert a == patient_key(b"k1" * 8, " MRN0012345 ")  # whitespace from a CSV does not matter
    assert a != patient_key(b"k2" * 8, "MRN0012345")  # another key, another pseudonym
    assert "0012345" not in a and len(a) == 32
    # domain separation: a study and a patient with the same text get different keys
    assert keyed_hash(b"k" * 16, "study", "x") != keyed_hash(b"k" * 16, "patient", "x")
