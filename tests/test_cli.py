"""Tests of the crossbar-emu command line: option checks, --print-config, data and output errors.

Most tests call ``crossbar_emu.cli.main`` in-process. argparse errors and ``parser.exit``
raise SystemExit, which ``run_main`` turns into the exit status. The test of --overwrite
trains on real MNIST and is skipped when CROSSBAR_EMU_DATA is unset.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import h5py
import numba
import pytest

from crossbar_emu import cli, mnist
from crossbar_emu.config import Config, config_from_dict

TRAIN_IMAGES = mnist.MNIST_FILES[0]


def run_main(args: list[str]) -> int:
    """Run the CLI in-process and return its exit status, whether returned or raised."""
    try:
        return cli.main(args)
    except SystemExit as exit_request:
        return exit_request.code


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Directory of the real MNIST files, or a skip if CROSSBAR_EMU_DATA is unset."""
    value = os.environ.get(mnist.ENV_VAR)
    if not value:
        pytest.skip(f"{mnist.ENV_VAR} is not set, so the real MNIST files cannot be found")
    return Path(value)


@pytest.fixture
def work_dir(tmp_path, monkeypatch) -> Path:
    """Empty working directory, so a default runs/ folder would show up in it."""
    directory = tmp_path / "work"
    directory.mkdir()
    monkeypatch.chdir(directory)
    return directory


# ---------------------------------------------------------------------------
# Invalid options
# ---------------------------------------------------------------------------

# Each case lists the options and the fragments that the error message must contain, which
# are the option, the value as reported and the valid range or choices.
INVALID_OPTIONS = [
    pytest.param(["--imbalance", "1.5"], ["--imbalance", "device.imbalance", "1.5", "(-1, 1)"], id="imbalance-1.5"),
    pytest.param(["--imbalance", "-1"], ["--imbalance", "-1.0", "(-1, 1)"], id="imbalance-minus-1"),
    pytest.param(["--bound", "-1"], ["--bound", "device.bound", "-1.0", "must be in (0, "], id="bound-negative"),
    pytest.param(["--dw-min", "0.7"], ["--dw-min", "0.7", "smaller than device.bound = 0.6"], id="dw-min-above-bound"),
    pytest.param(["--bl", "0"], ["--bl", "update.bit_length", ": 0;", "[1, 64]"], id="bl-0"),
    pytest.param(["--bl", "100"], ["--bl", "update.bit_length", "100", "[1, 64]"], id="bl-100"),
    pytest.param(["--epochs", "0"], ["--epochs", "training.epochs", ": 0;", "must be in [1, "], id="epochs-0"),
    pytest.param(["--epochs", "two"], ["--epochs", "'two'"], id="epochs-not-integer"),
    pytest.param(["--tile-size", "0"], ["--tile-size", "tile.max_rows", ": 0;", "must be in [1, "], id="tile-size-0"),
    pytest.param(["--tile-size", "1"], ["--tile-size", "tile.max_cols", ": 1;", "must be in [2, "], id="tile-size-1"),
    pytest.param(["--tile-size", "3x"], ["--tile-size", "'3x'", "N or ROWSxCOLS"], id="tile-size-3x"),
    pytest.param(["--tile-size", "2x3x4"], ["--tile-size", "'2x3x4'", "N or ROWSxCOLS"], id="tile-size-three-parts"),
    pytest.param(["--noise", "gaussian"], ["--noise", "gaussian", "multiplicative", "additive"], id="noise-gaussian"),
    pytest.param(["--device", "pcm"], ["--device", "pcm", "softbounds", "float"], id="device-pcm"),
    pytest.param(["--train-limit", "0"], ["--train-limit", "training.train_limit", ": 0;", "[1, 60000]"], id="train-limit-0"),
    pytest.param(["--test-limit", "10001"], ["--test-limit", "10001", "[1, 10000]"], id="test-limit-10001"),
    pytest.param(["--threads", "0"], ["--threads", "run.threads", ": 0;", "must be in [1, "], id="threads-0"),
    pytest.param(
        ["--threads", "9999"],
        ["--threads", "run.threads", "9999", f"[1, {numba.config.NUMBA_NUM_THREADS}]", "NUMBA_NUM_THREADS"],
        id="threads-9999",
    ),
    pytest.param(["--output-scale", "1,2"], ["--output-scale", "[1.0, 2.0]", "one per layer (3)"], id="output-scale-two-values"),
    pytest.param(["--hidden", "256,x"], ["--hidden", "'256,x'", "comma-separated integers"], id="hidden-not-integers"),
    pytest.param(["--lr", "nan"], ["--lr", "training.lr", "nan", "must be finite"], id="lr-nan"),
]


@pytest.mark.parametrize(("options", "fragments"), INVALID_OPTIONS)
def test_invalid_option_exits_before_work(options, fragments, tmp_path, work_dir, capsys):
    out = tmp_path / "result.h5"
    empty_data_dir = tmp_path / "empty-data"
    empty_data_dir.mkdir()

    status = run_main(["train", *options, "--out", str(out), "--data-dir", str(empty_data_dir), "--no-progress"])

    captured = capsys.readouterr()
    assert status == 2
    assert "error:" in captured.err
    for fragment in fragments:
        assert fragment in captured.err
    assert "MNIST" not in captured.err
    assert captured.out == ""
    assert not out.exists()
    assert list(work_dir.iterdir()) == []


def test_config_error_names_option(capsys):
    status = run_main(["train", "--bl", "100", "--print-config"])

    err = capsys.readouterr().err
    assert status == 2
    assert err == "crossbar-emu train: error: invalid value for --bl (update.bit_length): 100; must be in [1, 64]\n"


def test_missing_command(capsys):
    status = run_main([])

    assert status == 2
    assert "COMMAND" in capsys.readouterr().err


def test_fetch_timeout_zero(tmp_path, capsys):
    status = run_main(["data", "fetch", "--data-dir", str(tmp_path / "data"), "--timeout", "0"])

    err = capsys.readouterr().err
    assert status == 2
    assert "--timeout" in err
    assert "must be > 0" in err
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------------------
# --print-config and --config
# ---------------------------------------------------------------------------


def print_config(args: list[str], capsys) -> dict:
    """Run ``train --print-config`` with ``args`` and return the parsed TOML output."""
    status = run_main(["train", *args, "--print-config"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return tomllib.loads(captured.out)


def test_print_config_defaults(capsys, work_dir):
    printed = print_config([], capsys)

    assert config_from_dict(printed) == Config()
    assert list(work_dir.iterdir()) == []


def test_print_config_reflects_options(capsys):
    printed = print_config(["--imbalance", "0.3", "--tile-size", "256x128"], capsys)

    assert printed["device"]["imbalance"] == 0.3
    assert printed["tile"]["max_rows"] == 256
    assert printed["tile"]["max_cols"] == 128
    assert printed["device"]["bound"] == 0.6
    assert printed["update"]["bit_length"] == 10
    expected = Config().replace({"device.imbalance": 0.3, "tile.max_rows": 256, "tile.max_cols": 128})
    assert config_from_dict(printed) == expected


def test_print_config_square_tiles(capsys):
    printed = print_config(["--tile-size", "384"], capsys)

    assert printed["tile"]["max_rows"] == 384
    assert printed["tile"]["max_cols"] == 384


def test_print_config_lists_and_flags(capsys):
    printed = print_config(
        [
            "--hidden", "64,32",
            "--output-scale", "1,2,0.5",
            "--init-bound", "0.05",
            "--update-management",
            "--overwrite",
            "--device", "float",
            "--noise", "additive",
            "--reference", "column",
            "--train-limit", "300",
            "--threads", "1",
            "--seed", "7",
        ],
        capsys,
    )

    assert printed["network"]["hidden"] == [64, 32]
    assert printed["network"]["output_scale"] == [1.0, 2.0, 0.5]
    assert printed["network"]["init_bound"] == 0.05
    assert printed["update"]["update_management"] is True
    assert printed["run"]["overwrite"] is True
    assert printed["device"]["kind"] == "float"
    assert printed["device"]["noise"] == "additive"
    assert printed["tile"]["reference"] == "column"
    assert printed["training"]["train_limit"] == 300
    assert printed["run"]["threads"] == 1
    assert printed["training"]["seed"] == 7


def test_options_override_config_file(tmp_path, capsys):
    config_file = tmp_path / "run.toml"
    config_file.write_text("[device]\nimbalance = 0.2\nbound = 0.5\n\n[training]\nepochs = 5\nseed = 3\n")

    printed = print_config(["--config", str(config_file), "--imbalance", "0.3", "--epochs", "7"], capsys)

    assert printed["device"]["imbalance"] == 0.3
    assert printed["training"]["epochs"] == 7
    assert printed["device"]["bound"] == 0.5
    assert printed["training"]["seed"] == 3
    assert printed["device"]["dw_min"] == 0.001


def test_printed_config_reads_back(tmp_path, capsys):
    options = ["--imbalance", "-0.4", "--bl", "31", "--hidden", "100", "--output-scale", "2,0.5", "--test-limit", "200"]
    status = run_main(["train", *options, "--print-config"])
    first_text = capsys.readouterr().out
    config_file = tmp_path / "printed.toml"
    config_file.write_text(first_text)

    second_status = run_main(["train", "--config", str(config_file), "--print-config"])
    second_text = capsys.readouterr().out

    assert status == 0
    assert second_status == 0
    assert second_text == first_text


def test_invalid_config_file_value(tmp_path, capsys):
    config_file = tmp_path / "bad.toml"
    config_file.write_text("[update]\nbit_length = 65\n")

    status = run_main(["train", "--config", str(config_file), "--print-config"])

    captured = capsys.readouterr()
    assert status == 2
    assert "update.bit_length" in captured.err
    assert "65" in captured.err
    assert "[1, 64]" in captured.err
    assert captured.out == ""


def test_config_file_unknown_key(tmp_path, capsys):
    config_file = tmp_path / "unknown.toml"
    config_file.write_text("[training]\nepoch = 5\n")

    status = run_main(["train", "--config", str(config_file), "--print-config"])

    err = capsys.readouterr().err
    assert status == 2
    assert "training.epoch" in err
    assert "unknown key" in err
    assert "epochs" in err


def test_missing_config_file(tmp_path, capsys):
    config_file = tmp_path / "absent.toml"

    status = run_main(["train", "--config", str(config_file), "--print-config"])

    err = capsys.readouterr().err
    assert status == 2
    assert "--config" in err
    assert str(config_file) in err
    assert "file not found" in err


# ---------------------------------------------------------------------------
# Data and result files
# ---------------------------------------------------------------------------


def test_missing_mnist_directory(tmp_path, work_dir, capsys, caplog):
    data_dir = tmp_path / "no-such-dir"
    out = tmp_path / "result.h5"
    caplog.set_level(logging.ERROR)

    status = run_main(["train", "--data-dir", str(data_dir), "--out", str(out), "--epochs", "1", "--no-progress"])

    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert status == 1
    assert len(errors) == 1
    assert TRAIN_IMAGES.name in errors[0]
    assert TRAIN_IMAGES.sha256 in errors[0]
    assert str(data_dir) in errors[0]
    assert "crossbar-emu data fetch" in errors[0]
    assert not out.exists()
    assert not data_dir.exists()
    assert list(work_dir.iterdir()) == []


def test_existing_out_not_overwritten(tmp_path, capsys):
    out = tmp_path / "result.h5"
    out.write_bytes(b"an earlier result")
    empty_data_dir = tmp_path / "empty-data"
    empty_data_dir.mkdir()

    status = run_main(["train", "--out", str(out), "--data-dir", str(empty_data_dir), "--epochs", "1", "--no-progress"])

    err = capsys.readouterr().err
    assert status == 2
    assert str(out) in err
    assert "already exists" in err
    assert "--overwrite" in err
    assert "MNIST" not in err
    assert out.read_bytes() == b"an earlier result"


def test_overwrite_with_invalid_option_keeps_file(tmp_path, capsys):
    out = tmp_path / "result.h5"
    out.write_bytes(b"an earlier result")

    status = run_main(["train", "--out", str(out), "--overwrite", "--bl", "0", "--no-progress"])

    assert status == 2
    assert "--bl" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier result"


def test_missing_data_keeps_out_file(tmp_path, capsys):
    out = tmp_path / "result.h5"
    out.write_bytes(b"an earlier result")

    status = run_main(
        ["train", "--out", str(out), "--overwrite", "--data-dir", str(tmp_path / "no-data"), "--epochs", "1", "--no-progress"]
    )

    assert status == 1
    assert out.read_bytes() == b"an earlier result"


@pytest.mark.mnist
def test_overwrite_replaces_out_file(tmp_path, mnist_dir, capsys):
    out = tmp_path / "result.h5"
    out.write_bytes(b"an earlier result")
    options = ["--train-limit", "20", "--test-limit", "20", "--epochs", "1", "--no-progress"]

    status = run_main(["train", "--out", str(out), "--data-dir", str(mnist_dir), "--overwrite", *options])

    assert status == 0, capsys.readouterr().err
    assert h5py.is_hdf5(out)
    with h5py.File(out, "r") as result:
        assert result.attrs["status"] == "completed"
        assert result["metrics"].shape == (1,)


# ---------------------------------------------------------------------------
# python -m crossbar_emu
# ---------------------------------------------------------------------------


def run_module(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crossbar_emu", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_module_help(tmp_path):
    completed = run_module(["--help"], tmp_path)

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("usage: crossbar-emu")
    assert "train" in completed.stdout
    assert "data" in completed.stdout


def test_module_train_help(tmp_path):
    completed = run_module(["train", "--help"], tmp_path)

    assert completed.returncode == 0, completed.stderr
    for option in ("--imbalance", "--tile-size", "--bl", "--print-config", "--overwrite"):
        assert option in completed.stdout


def test_module_invalid_option(tmp_path):
    out = tmp_path / "result.h5"

    completed = run_module(["train", "--bl", "100", "--out", str(out)], tmp_path)

    assert completed.returncode == 2
    assert "invalid value for --bl (update.bit_length): 100; must be in [1, 64]" in completed.stderr
    assert completed.stdout == ""
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
