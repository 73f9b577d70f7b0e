import pytest
import yaml

from usv_ray.config import Config, ConfigError, load_config, parse_override, to_dict


def test_defaults_without_file():
    assert load_config() == Config()


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ingest:\n  n_frames: 12\n  crop_box: [0, 0.1, 1, 1]\nsynth:\n  fps: 25\n")
    cfg = load_config(path, ["ingest.sampling=equal", "ray.num_cpus=2"])
    assert cfg.ingest.n_frames == 12
    assert cfg.ingest.crop_box == (0.0, 0.1, 1.0, 1.0)  # lists become tuples, ints floats
    assert cfg.ingest.sampling == "equal"
    assert cfg.synth.fps == 25.0 and isinstance(cfg.synth.fps, float)
    assert cfg.ray.num_cpus == 2


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "message"),
    [
        ("ingest:\n  n_frame: 3\n", [], "unknown key ingest.n_frame"),
        ("ingets:\n  n_frames: 3\n", [], "unknown key ingets"),
        (
            "",
            ["ingest.sampling=some"],
            "ingest.sampling: 'some' is not one of all, equal, variable",
        ),
        ("", ["ingest.n_frames=many"], "ingest.n_frames: expected int"),
        ("", ["ingest.n_frames=true"], "ingest.n_frames: expected int"),
        ("", ["ingest.crop_box=[0, 1]"], "expected a list of 4 values"),
        ("", ["ingest"], "expected key=value"),
        ("- a\n- b\n", [], "top level must be a mapping"),
        ("", ["ray.address.x=1"], "ray.address"),
    ],
)
def test_rejects_with_a_clear_message(tmp_path, yaml_text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(path, overrides)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("no/such.yaml")


def test_optional_values_take_none():
    cfg = load_config(None, ["ray.address=null", "ray.num_cpus=3"])
    assert cfg.ray.address is None and cfg.ray.num_cpus == 3


def test_parse_override_yaml_values():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b = x=y") == ("a.b", "x=y")


def test_config_is_frozen_and_round_trips_through_yaml(tmp_path):
    cfg = load_config(None, ["ingest.crop_box=[0, 0.2, 1, 0.9]", "synth.patients=3"])
    with pytest.raises(AttributeError):
        cfg.ingest.n_frames = 3  # type: ignore[misc]
    path = tmp_path / "dumped.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(path) == cfg
