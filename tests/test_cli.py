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


HEAVY = ("torch", "numba", "matplotlib", "pandas", "ray", "sklearn", "cv2", "yaml")


def test_help_starts_without_heavy_imports():
    """`usv-ray --help` and the parser import no stage: no PyTorch, numba, pandas, Ray."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from usv_ray.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage: usv-ray" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_every_user_error_is_one_line_and_exit_code_2(monkeypatch, capsys):
    """main catches the one base class: a stage's error needs no import in the CLI."""
    from usv_ray.errors import UsvRayError
    from usv_ray.ingest.decode import VideoError
    from usv_ray.io import FolderClaimed
    from usv_ray.report import ReportError
    from usv_ray.runtime import RayUnreachableError

    for error in (ReportError("r"), FolderClaimed("f"), VideoError("k", "m")):
        assert isinstance(error, UsvRayError)

    def fail(args):
        raise RayUnreachableError("cannot reach the Ray cluster at 10.0.0.1:6379")

    monkeypatch.setattr("usv_ray.cli.cmd_report", fail)
    assert main(["report", "--out", "x"]) == 2
    assert capsys.readouterr().err == (
        "usv-ray: error: cannot reach the Ray cluster at 10.0.0.1:6379\n"
    )


def test_report_without_a_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_verbose_flag_keeps_ray_logs(monkeypatch, tmp_path):
    from usv_ray import runtime

    monkeypatch.setenv(runtime.VERBOSE_ENV, "0")  # restored after the test
    main(["report", "--out", str(tmp_path / "none")])
    assert not runtime.is_verbose()
    main(["-v", "report", "--out", str(tmp_path / "none")])
    assert runtime.is_verbose()
