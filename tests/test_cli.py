import pytest

from usv_ray.cli import PACKAGED_CONFIGS, main, resolve_config_path
from usv_ray.config import load_config


def test_packaged_configs_load():
    for name in ("demo", "paper"):
        path = resolve_config_path(name)
        assert path == PACKAGED_CONFIGS / f"{name}.yaml"
        load_config(path)  # no unknown keys
    assert load_config(resolve_config_path("demo")).privacy.dev_key is True
    assert load_config(resolve_config_path("paper")).privacy.dev_key is False


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys):
    code = main(
        ["ingest", "--manifest", "m.csv", "--out", str(tmp_path), "--set", "ingest.n_frame=3"]
    )
    assert code == 2
    assert "unknown key ingest.n_frame" in capsys.readouterr().err


def test_missing_manifest_is_a_clear_error(tmp_path, capsys):
    code = main(
        [
            "ingest",
            "--config",
            "demo",
            "--manifest",
            str(tmp_path / "none.csv"),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "manifest not found" in capsys.readouterr().err


def test_real_data_without_a_key_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("USV_RAY_SECRET", raising=False)
    (tmp_path / "m.csv").write_text("video,patient_id\nx.mp4,P1\n")
    code = main(
        [
            "ingest",
            "--config",
            "paper",
            "--manifest",
            str(tmp_path / "m.csv"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "USV_RAY_SECRET" in capsys.readouterr().err


def test_reid_without_ingested_tracklets_is_a_clear_error(tmp_path, capsys):
    argv = ["reid", "--config", "demo", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "run ingest first" in capsys.readouterr().err


def test_stage_is_required(capsys):
    with pytest.raises(SystemExit):
        main([])


def test_bad_crop_box_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("video,patient_id\nx.mp4,P1\n")
    argv = [
        "ingest",
        "--config",
        "demo",
        "--manifest",
        str(tmp_path / "m.csv"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, "--set", "ingest.crop_box=[0, 0.5, 1, 0.2]"]) == 2
    assert "ingest.crop_box" in capsys.readouterr().err


def test_job_entry_point_takes_the_ingest_arguments():
    import subprocess
    import sys
    from pathlib import Path

    job = Path(__file__).resolve().parents[1] / "jobs" / "ingest.py"
    done = subprocess.run([sys.executable, str(job), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--manifest" in done.stdout
