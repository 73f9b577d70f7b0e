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


def test_renamed_keys_work_for_one_release_with_a_warning_naming_the_new_key(tmp_path, caplog):
    import logging

    path = tmp_path / "old.yaml"
    path.write_text(
        "classify:\n  cnn_epochs: 7\n  precision: bf16\n  lstm:\n    epochs: 9\n"
        "  lstm_epochs: 3\ndetect:\n  track_high: 0.2\n"
    )
    with caplog.at_level(logging.WARNING, logger="usv_ray.config"):
        cfg = load_config(path, ["reid.pair_batch_size=4", "classify.lstm.hidden=64"])
    assert cfg.classify.cnn.epochs == 7
    # one old key, one value for each model it now names
    assert {cfg.classify.cnn.precision, cfg.classify.lstm.precision} == {"bf16"}
    assert cfg.classify.video.precision == "bf16"
    assert cfg.classify.lstm.epochs == 9  # the file's own new key wins over its old one
    assert cfg.detect.track.high == 0.2 and cfg.reid.batch_size == 4
    assert "classify.cnn_epochs is renamed classify.cnn.epochs" in caplog.text
    assert "reid.pair_batch_size is renamed reid.batch_size" in caplog.text
    # an old key on the command line overrides the file's new one, as any --set does
    assert load_config(path, ["classify.lstm_epochs=2"]).classify.lstm.epochs == 2
