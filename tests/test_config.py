"""Tests of crossbar_emu.config: defaults, validation, dotted overrides, TOML files."""

from __future__ import annotations

import dataclasses
import math
import tomllib

import pytest

from crossbar_emu.config import (
    Config,
    ConfigError,
    DeviceConfig,
    NetworkConfig,
    TrainingConfig,
    UpdateConfig,
    config_from_dict,
    load_config,
)

# ---------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------


def test_device_defaults():
    device = Config().device

    assert device.kind == "softbounds"
    assert device.dw_min == 0.001
    assert device.bound == 0.6
    assert device.dw_min_dtod == 0.3
    assert device.bound_dtod == 0.3
    assert device.up_down_dtod == 0.01
    assert device.imbalance == 0.0
    assert device.noise == "multiplicative"
    assert device.noise_std == 0.3


def test_tile_update_network_defaults():
    config = Config()

    assert config.tile.max_rows == 512
    assert config.tile.max_cols == 512
    assert config.tile.reference == "cell"
    assert config.tile.reference_value == 0.0
    assert config.update.bit_length == 10
    assert config.update.update_management is False
    assert config.network.hidden == (256, 128)
    assert config.network.init_bound == "fan_in"
    assert config.network.output_scale == (1.0,)
    assert config.network.layer_scales() == (1.0, 1.0, 1.0)


def test_training_and_run_defaults():
    config = Config()

    assert config.training.epochs == 30
    assert config.training.lr == 0.01
    assert config.training.lr_decay == 0.5
    assert config.training.lr_decay_every == 10
    assert config.training.batch_size == 1
    assert config.training.seed == 0
    assert config.training.train_limit is None
    assert config.training.test_limit is None
    assert config.training.shuffle is True
    assert config.run.data_dir is None
    assert config.run.out is None
    assert config.run.overwrite is False
    assert config.run.threads is None


@pytest.mark.parametrize(
    ("epoch", "expected_rate"),
    [(1, 0.01), (10, 0.01), (11, 0.005), (20, 0.005), (21, 0.0025), (30, 0.0025)],
)
def test_default_learning_rate_schedule(epoch, expected_rate):
    assert Config().training.learning_rate(epoch) == expected_rate


def test_learning_rate_custom_decay():
    training = TrainingConfig(lr=0.1, lr_decay=0.1, lr_decay_every=2)

    assert training.learning_rate(2) == pytest.approx(0.1)
    assert training.learning_rate(3) == pytest.approx(0.01)
    assert training.learning_rate(5) == pytest.approx(0.001)


def test_layer_scales_one_per_layer():
    network = NetworkConfig(hidden=(64,), output_scale=(2.0, 3.0))

    assert network.layer_scales() == (2.0, 3.0)


def test_config_is_frozen():
    config = Config()

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.device.bound = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

# Each case: dotted key, invalid value, the value the error reports, a fragment of its rule.
INVALID_VALUES = [
    pytest.param("device.imbalance", 1, 1, "must be in (-1, 1)", id="imbalance-1"),
    pytest.param("device.imbalance", -1, -1, "must be in (-1, 1)", id="imbalance-minus-1"),
    pytest.param("device.bound", 0, 0, "must be in (0, ", id="bound-0"),
    pytest.param("device.bound", -0.6, -0.6, "must be in (0, ", id="bound-negative"),
    pytest.param("device.dw_min", -0.001, -0.001, "must be in (0, ", id="dw-min-negative"),
    pytest.param("device.dw_min", 0.6, 0.6, "must be smaller than device.bound = 0.6", id="dw-min-equals-bound"),
    pytest.param("device.dw_min", 0.7, 0.7, "must be smaller than device.bound = 0.6", id="dw-min-above-bound"),
    pytest.param("device.kind", "pcm", "pcm", "must be one of softbounds, float", id="kind-pcm"),
    pytest.param("device.noise", "gaussian", "gaussian", "must be one of multiplicative, additive", id="noise-gaussian"),
    pytest.param("device.noise_std", -0.1, -0.1, "must be in [0, ", id="noise-std-negative"),
    pytest.param("device.bound_dtod", -0.3, -0.3, "must be in [0, ", id="bound-dtod-negative"),
    pytest.param("tile.max_rows", 0, 0, "must be in [1, ", id="max-rows-0"),
    pytest.param("tile.max_cols", 1, 1, "must be in [2, ", id="max-cols-1"),
    pytest.param("tile.reference", "row", "row", "must be one of cell, column", id="reference-row"),
    pytest.param("update.bit_length", 0, 0, "must be in [1, 64]", id="bl-0"),
    pytest.param("update.bit_length", 65, 65, "must be in [1, 64]", id="bl-65"),
    pytest.param("update.update_management", "yes", "yes", "must be true or false", id="update-management-string"),
    pytest.param("network.hidden", [256, 0], 0, "must be in [1, ", id="hidden-width-0"),
    pytest.param("network.init_bound", -0.1, -0.1, "must be in [0, ", id="init-bound-negative"),
    pytest.param("network.init_bound", "uniform", "uniform", "must be a number", id="init-bound-string"),
    pytest.param("network.output_scale", [1.0, 2.0], [1.0, 2.0], "must hold 1 value or one per layer (3)", id="output-scale-two-values"),
    pytest.param("network.output_scale", 0.0, 0.0, "must be in (0, ", id="output-scale-0"),
    pytest.param("training.epochs", -1, -1, "must be in [1, ", id="epochs-negative"),
    pytest.param("training.epochs", 0, 0, "must be in [1, ", id="epochs-0"),
    pytest.param("training.epochs", 2.5, 2.5, "must be an integer", id="epochs-float"),
    pytest.param("training.epochs", True, True, "must be an integer", id="epochs-bool"),
    pytest.param("training.lr", 0.0, 0.0, "must be in (0, ", id="lr-0"),
    pytest.param("training.lr_decay", 1.5, 1.5, "must be in (0, 1]", id="lr-decay-above-1"),
    pytest.param("training.lr_decay_every", 0, 0, "must be in [1, ", id="lr-decay-every-0"),
    pytest.param("training.batch_size", 0, 0, "must be in [1, ", id="batch-size-0"),
    pytest.param("training.seed", -1, -1, "must be in [0, ", id="seed-negative"),
    pytest.param("training.train_limit", 0, 0, "must be in [1, 60000]", id="train-limit-0"),
    pytest.param("training.train_limit", 60001, 60001, "must be in [1, 60000]", id="train-limit-60001"),
    pytest.param("training.test_limit", 10001, 10001, "must be in [1, 10000]", id="test-limit-10001"),
    pytest.param("training.shuffle", 1, 1, "must be true or false", id="shuffle-int"),
    pytest.param("run.threads", 0, 0, "must be in [1, ", id="threads-0"),
    pytest.param("run.overwrite", "no", "no", "must be true or false", id="overwrite-string"),
    pytest.param("device.bound", True, True, "must be a number", id="bound-bool"),
    pytest.param("device.bound", "0.6", "0.6", "must be a number", id="bound-string"),
    pytest.param("device.noise_std", math.nan, math.nan, "must be finite", id="noise-std-nan"),
    pytest.param("training.lr", math.inf, math.inf, "must be finite", id="lr-inf"),
]


def assert_reported_value(reported, expected):
    if isinstance(expected, float) and math.isnan(expected):
        assert isinstance(reported, float)
        assert math.isnan(reported)
    else:
        assert reported == expected
        assert type(reported) is type(expected)


@pytest.mark.parametrize(("key", "value", "reported_value", "rule_fragment"), INVALID_VALUES)
def test_invalid_value_raises_config_error(key, value, reported_value, rule_fragment):
    with pytest.raises(ConfigError) as excinfo:
        Config().replace({key: value})

    error = excinfo.value
    assert error.key == key
    assert_reported_value(error.value, reported_value)
    assert rule_fragment in error.rule
    assert str(error) == f"invalid {key} = {error.value!r}: {error.rule}"


def test_config_error_is_value_error():
    with pytest.raises(ValueError):
        Config().replace({"device.imbalance": 2.0})


def test_sections_validate_on_construction():
    with pytest.raises(ConfigError) as device_error:
        DeviceConfig(imbalance=1.0)
    with pytest.raises(ConfigError) as update_error:
        UpdateConfig(bit_length=65)
    with pytest.raises(ConfigError) as training_error:
        TrainingConfig(train_limit=60001)

    assert device_error.value.key == "device.imbalance"
    assert update_error.value.key == "update.bit_length"
    assert training_error.value.key == "training.train_limit"


def test_dw_min_above_bound_allowed_for_float():
    config = Config().replace({"device.kind": "float", "device.dw_min": 1.0, "device.bound": 0.6})

    assert config.device.kind == "float"
    assert config.device.dw_min == 1.0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("device.imbalance", 0.999),
        ("device.imbalance", -0.999),
        ("update.bit_length", 1),
        ("update.bit_length", 64),
        ("training.train_limit", 1),
        ("training.train_limit", 60000),
        ("training.test_limit", 10000),
        ("tile.max_cols", 2),
        ("training.lr_decay", 1.0),
        ("network.output_scale", [1.0, 2.0, 0.5]),
        ("network.init_bound", 0.05),
    ],
)
def test_boundary_values_accepted(key, value):
    config = Config().replace({key: value})

    section, _, name = key.partition(".")
    stored = getattr(getattr(config, section), name)
    if isinstance(value, list):
        assert stored == tuple(value)
    else:
        assert stored == value


def test_scalar_output_scale_becomes_tuple():
    config = Config().replace({"network.output_scale": 2.0})

    assert config.network.output_scale == (2.0,)
    assert config.network.layer_scales() == (2.0, 2.0, 2.0)


# ---------------------------------------------------------------------------
# Config.replace
# ---------------------------------------------------------------------------


def test_replace_sets_dotted_keys():
    original = Config()

    changed = original.replace({"device.imbalance": 0.3, "tile.max_rows": 256, "training.epochs": 2})

    assert changed.device.imbalance == 0.3
    assert changed.tile.max_rows == 256
    assert changed.training.epochs == 2
    assert changed.device.bound == original.device.bound
    assert original.device.imbalance == 0.0
    assert original.training.epochs == 30


@pytest.mark.parametrize("key", ["device.colour", "optimizer.lr", "device", "epochs"])
def test_replace_unknown_key(key):
    with pytest.raises(ConfigError) as excinfo:
        Config().replace({key: 1})

    assert excinfo.value.key == key
    assert excinfo.value.value == 1
    assert excinfo.value.rule == "unknown configuration key"


# ---------------------------------------------------------------------------
# load_config and config_from_dict
# ---------------------------------------------------------------------------


def test_load_partial_file_keeps_defaults(tmp_path):
    path = tmp_path / "partial.toml"
    path.write_text("[device]\nimbalance = 0.3\n\n[training]\nepochs = 5\n")

    config = load_config(path)

    assert config.device.imbalance == 0.3
    assert config.training.epochs == 5
    assert config == Config().replace({"device.imbalance": 0.3, "training.epochs": 5})


def test_load_accepts_str_path(tmp_path):
    path = tmp_path / "bl.toml"
    path.write_text("[update]\nbit_length = 31\n")

    assert load_config(str(path)).update.bit_length == 31


def test_load_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("")

    assert load_config(path) == Config()


def test_load_unknown_section(tmp_path):
    path = tmp_path / "section.toml"
    path.write_text("[optimizer]\nlr = 0.1\n")

    with pytest.raises(ConfigError) as excinfo:
        load_config(path)

    error = excinfo.value
    assert error.key == "optimizer"
    assert error.value == {"lr": 0.1}
    assert "unknown section" in error.rule
    for section in ("device", "tile", "update", "network", "training", "run"):
        assert section in error.rule


def test_load_unknown_key(tmp_path):
    path = tmp_path / "key.toml"
    path.write_text("[device]\ncolour = 1\n")

    with pytest.raises(ConfigError) as excinfo:
        load_config(path)

    error = excinfo.value
    assert error.key == "device.colour"
    assert error.value == 1
    assert "unknown key" in error.rule
    assert "imbalance" in error.rule


def test_load_section_not_a_table(tmp_path):
    path = tmp_path / "scalar.toml"
    path.write_text("device = 5\n")

    with pytest.raises(ConfigError) as excinfo:
        load_config(path)

    assert excinfo.value.key == "device"
    assert excinfo.value.value == 5
    assert excinfo.value.rule == "must be a table of keys"


def test_load_invalid_value(tmp_path):
    path = tmp_path / "value.toml"
    path.write_text("[update]\nbit_length = 65\n")

    with pytest.raises(ConfigError) as excinfo:
        load_config(path)

    assert excinfo.value.key == "update.bit_length"
    assert excinfo.value.value == 65


def test_load_malformed_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[device\nimbalance = 0.3\n")

    with pytest.raises(ConfigError) as excinfo:
        load_config(path)

    error = excinfo.value
    assert error.key == "--config"
    assert error.value == str(path)
    assert error.rule.startswith("not valid TOML: ")
    assert "line 1" in error.rule


def test_load_missing_file(tmp_path):
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as excinfo:
        load_config(path)

    assert excinfo.value.key == "--config"
    assert excinfo.value.value == str(path)
    assert excinfo.value.rule == "file not found"
    assert str(path) in str(excinfo.value)


def test_from_dict_converts_lists_to_tuples():
    config = config_from_dict({"network": {"hidden": [64, 32], "output_scale": [1.0, 2.0, 0.5]}})

    assert config.network.hidden == (64, 32)
    assert config.network.output_scale == (1.0, 2.0, 0.5)


# ---------------------------------------------------------------------------
# TOML output
# ---------------------------------------------------------------------------


def round_trip(config: Config) -> Config:
    return config_from_dict(tomllib.loads(config.to_toml()))


def test_default_toml_round_trip():
    config = Config()

    assert round_trip(config) == config


def test_custom_toml_round_trip():
    config = Config().replace(
        {
            "device.kind": "softbounds",
            "device.imbalance": -0.25,
            "device.dw_min": 1e-05,
            "device.noise": "additive",
            "tile.max_rows": 256,
            "tile.max_cols": 128,
            "tile.reference": "column",
            "tile.reference_value": 0.1,
            "update.bit_length": 31,
            "update.update_management": True,
            "network.hidden": [64],
            "network.init_bound": 0.05,
            "network.output_scale": [2.0, 0.5],
            "training.epochs": 3,
            "training.train_limit": 300,
            "training.test_limit": 200,
            "training.seed": 2**63 - 1,
            "training.shuffle": False,
            "run.data_dir": "/data/mnist",
            "run.out": "runs/größe \"quoted\" \\ run.h5",
            "run.overwrite": True,
            "run.threads": 1,
        }
    )

    assert round_trip(config) == config


def test_toml_out_path_outside_bmp():
    config = Config().replace({"run.out": "runs/\U0001f600.h5"})

    assert round_trip(config) == config


def test_toml_unset_values_are_comments():
    text = Config().to_toml()
    parsed = tomllib.loads(text)

    assert "# train_limit is unset" in text
    assert "# threads is unset" in text
    assert "train_limit" not in parsed["training"]
    assert "threads" not in parsed["run"]
    assert sorted(parsed) == sorted(field.name for field in dataclasses.fields(Config))


def test_override_replaces_invalid_file_value(tmp_path):
    # An option that replaces a file value wins before validation, so the file's invalid
    # value is never checked.
    path = tmp_path / "run.toml"
    path.write_text("[device]\nimbalance = 2.0\n\n[training]\nepochs = 0\n")
    config = load_config(path, {"device.imbalance": 0.1, "training.epochs": 2})
    assert config.device.imbalance == 0.1
    assert config.training.epochs == 2
    with pytest.raises(ConfigError) as raised:
        load_config(path, {"device.imbalance": 0.1})
    assert raised.value.key == "training.epochs"
    with pytest.raises(ConfigError) as raised:
        load_config(path, {"device.imbalence": 0.1})
    assert raised.value.key == "device.imbalence"
