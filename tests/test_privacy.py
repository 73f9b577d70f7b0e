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


def test_a_data_folder_refuses_another_key_before_anything_is_read(tmp_path, monkeypatch):
    import json

    from usv_ray.privacy import KeyMismatchError, key_check, record_keying

    monkeypatch.delenv("USV_RAY_SECRET", raising=False)
    private = PrivacyConfig(key_file="k")
    first = record_keying(tmp_path, private, b"the hospital's key, 32 bytes long")
    assert first["check"] == key_check(b"the hospital's key, 32 bytes long")
    assert "32 bytes" not in json.dumps(first)  # never the key
    record_keying(tmp_path, private, b"the hospital's key, 32 bytes long")  # the same: fine
    with pytest.raises(KeyMismatchError, match=r"another private key .*check value differs"):
        record_keying(tmp_path, private, b"another key of another hospital")
    with pytest.raises(KeyMismatchError, match="keyed with the private key, and this run has "):
        record_keying(tmp_path, PrivacyConfig(dev_key=True), DEV_KEY)
    assert json.loads((tmp_path / "keying.json").read_text()) == first  # left as it was


def test_an_older_record_without_a_check_value_adopts_the_key_with_a_warning(tmp_path, caplog):
    import json

    from usv_ray.privacy import KeyMismatchError, record_keying

    (tmp_path / "keying.json").write_text(json.dumps({"keys": ["development"]}))
    with caplog.at_level("WARNING"):
        record = record_keying(tmp_path, PrivacyConfig(dev_key=True), DEV_KEY)
    assert "records no check value" in caplog.text and record["check"]
    mixed = {"keys": ["development", "private"], "sources": []}
    (tmp_path / "keying.json").write_text(json.dumps(mixed))
    with pytest.raises(KeyMismatchError, match="both the development key and a private key"):
        record_keying(tmp_path, PrivacyConfig(dev_key=True), DEV_KEY)
