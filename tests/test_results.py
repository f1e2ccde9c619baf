"""Tests of the HDF5 result file written by short training runs on real MNIST.

The runs use a few hundred samples and two epochs, so they check the file layout
documented in crossbar_emu/results.py and the handling of stopped runs, not accuracy.
They are skipped when CROSSBAR_EMU_DATA is unset.
"""

from __future__ import annotations

import datetime
import json
import os
from importlib import metadata
from pathlib import Path

import h5py
import numba
import numpy as np
import pytest

from crossbar_emu import cli, mnist
from crossbar_emu.config import Config, config_from_dict
from crossbar_emu.network import CrossbarMLP
from crossbar_emu.results import ResultFile
from crossbar_emu.training import train

pytestmark = pytest.mark.mnist

TRAIN_LIMIT = 300
TEST_LIMIT = 200
EPOCHS = 2
SEED = 3

# (n_in, n_out) of the three layers of the 784-256-128-10 network.
LAYER_SIZES = [(784, 256), (256, 128), (128, 10)]

METRICS_FIELDS = (
    "epoch",
    "learning_rate",
    "train_loss",
    "train_error",
    "test_loss",
    "test_error",
    "seconds",
    "samples_per_second",
    "pulses_up",
    "pulses_down",
)
ROOT_ATTRIBUTES = {
    "schema_version",
    "package_version",
    "seed",
    "created",
    "config",
    "status",
    "epochs_completed",
    "threads",
    "numba_version",
    "numpy_version",
    "stopped_early",
}
LAYER_ATTRIBUTES = {"n_in", "n_out", "out_scale", "row_bounds", "col_bounds", "reference_layout", "device_kind"}
LAYER_DATASETS = {"alpha_up", "alpha_down", "b_max", "b_min", "reference", "conductance_initial", "conductance"}


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Directory of the real MNIST files, or a skip if CROSSBAR_EMU_DATA is unset."""
    value = os.environ.get(mnist.ENV_VAR)
    if not value:
        pytest.skip(f"{mnist.ENV_VAR} is not set, so the real MNIST files cannot be found")
    return Path(value)


@pytest.fixture(scope="module")
def mnist_data(mnist_dir) -> mnist.MnistData:
    return mnist.load_mnist(mnist_dir)


def run_cli(args: list[str]) -> int:
    try:
        return cli.main(args)
    except SystemExit as exit_request:
        return exit_request.code


def expected_config(kind: str, out: Path, data_dir: Path) -> Config:
    """Return the configuration that the CLI run of ``completed_run`` resolves."""
    return Config().replace(
        {
            "run.data_dir": str(data_dir),
            "device.kind": kind,
            "training.train_limit": TRAIN_LIMIT,
            "training.test_limit": TEST_LIMIT,
            "training.epochs": EPOCHS,
            "training.seed": SEED,
            "run.out": str(out),
        }
    )


@pytest.fixture(scope="module", params=["softbounds", "float"])
def completed_run(request, mnist_dir, tmp_path_factory) -> tuple[str, Path, Config]:
    """Train through the CLI once per device kind.

    Returns the device kind, the result path and the configuration the run should store.
    """
    kind = request.param
    out = tmp_path_factory.mktemp(f"run-{kind}") / "run.h5"
    args = [
        "train",
        "--device", kind,
        "--train-limit", str(TRAIN_LIMIT),
        "--test-limit", str(TEST_LIMIT),
        "--epochs", str(EPOCHS),
        "--seed", str(SEED),
        "--data-dir", str(mnist_dir),
        "--out", str(out),
        "--no-progress",
    ]

    status = run_cli(args)

    assert status == 0
    return kind, out, expected_config(kind, out, mnist_dir)


# ---------------------------------------------------------------------------
# Layout of a completed run
# ---------------------------------------------------------------------------


def test_root_attributes(completed_run):
    _, out, _ = completed_run

    with h5py.File(out, "r") as result:
        attrs = dict(result.attrs)

    assert set(attrs) >= ROOT_ATTRIBUTES
    assert attrs["schema_version"] == 2
    assert attrs["package_version"] == metadata.version("crossbar-emu")
    assert attrs["seed"] == SEED
    assert attrs["status"] == "completed"
    assert attrs["stopped_early"] == False  # noqa: E712 (numpy bool)
    assert attrs["epochs_completed"] == EPOCHS
    assert 1 <= attrs["threads"] <= numba.config.NUMBA_NUM_THREADS
    assert attrs["numba_version"] == numba.__version__
    assert attrs["numpy_version"] == np.__version__


def test_created_is_recent_utc(completed_run):
    _, out, _ = completed_run

    with h5py.File(out, "r") as result:
        created = datetime.datetime.fromisoformat(result.attrs["created"])

    assert created.utcoffset() == datetime.timedelta(0)
    age = datetime.datetime.now(datetime.timezone.utc) - created
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=10)


def test_stored_config_matches_run(completed_run):
    _, out, config = completed_run

    with h5py.File(out, "r") as result:
        stored = json.loads(result.attrs["config"])

    assert stored == config.to_dict()
    assert config_from_dict(stored) == config


def test_metrics_rows(completed_run):
    _, out, _ = completed_run

    with h5py.File(out, "r") as result:
        dataset = result["metrics"]
        shape = dataset.shape
        maxshape = dataset.maxshape
        names = dataset.dtype.names
        units = dataset.attrs["units"]
        description = dataset.attrs["description"]
        metrics = dataset[...]

    assert shape == (EPOCHS,)
    assert maxshape == (None,)
    assert names == METRICS_FIELDS
    assert units
    assert description
    assert metrics["epoch"].tolist() == [1, 2]
    assert metrics["learning_rate"].tolist() == [0.01, 0.01]
    for field in ("train_error", "test_error"):
        assert np.all(metrics[field] >= 0.0)
        assert np.all(metrics[field] <= 1.0)
    for field in ("train_loss", "test_loss", "seconds", "samples_per_second"):
        assert np.all(np.isfinite(metrics[field]))
        assert np.all(metrics[field] > 0.0)


def test_metrics_pulse_counts(completed_run):
    kind, out, _ = completed_run

    with h5py.File(out, "r") as result:
        metrics = result["metrics"][...]

    if kind == "softbounds":
        assert np.all(metrics["pulses_up"] > 0)
        assert np.all(metrics["pulses_down"] > 0)
    else:
        assert metrics["pulses_up"].tolist() == [0, 0]
        assert metrics["pulses_down"].tolist() == [0, 0]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_layer_attributes(completed_run, index):
    kind, out, _ = completed_run
    n_in, n_out = LAYER_SIZES[index]

    with h5py.File(out, "r") as result:
        assert sorted(result["layers"]) == ["layer_0", "layer_1", "layer_2"]
        attrs = dict(result[f"layers/layer_{index}"].attrs)

    assert set(attrs) >= LAYER_ATTRIBUTES
    assert attrs["n_in"] == n_in
    assert attrs["n_out"] == n_out
    assert attrs["out_scale"] == 1.0
    assert attrs["row_bounds"].tolist() == [0, n_out]
    assert attrs["reference_layout"] == "cell"
    assert attrs["device_kind"] == kind
    if index == 0:
        assert attrs["col_bounds"].tolist() == [0, 512, 785]
    else:
        assert attrs["col_bounds"].tolist() == [0, n_in + 1]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_layer_datasets(completed_run, index):
    _, out, _ = completed_run
    n_in, n_out = LAYER_SIZES[index]

    with h5py.File(out, "r") as result:
        group = result[f"layers/layer_{index}"]
        assert set(group) >= LAYER_DATASETS
        for name in LAYER_DATASETS:
            dataset = group[name]
            assert dataset.shape == (n_out, n_in + 1), name
            assert dataset.dtype == np.float64, name
            assert dataset.attrs["units"] == "weight units", name
        for name, dataset in group.items():
            assert dataset.attrs["units"], name
            assert dataset.attrs["description"], name
        assert group["conductance"].attrs["epoch"] == EPOCHS


@pytest.mark.parametrize("index", [0, 1, 2])
def test_layer_device_values(completed_run, index):
    kind, out, _ = completed_run

    with h5py.File(out, "r") as result:
        group = result[f"layers/layer_{index}"]
        arrays = {name: group[name][...] for name in LAYER_DATASETS}

    assert not np.array_equal(arrays["conductance"], arrays["conductance_initial"])
    assert np.all(np.isfinite(arrays["conductance"]))
    assert np.all(arrays["reference"] == 0.0)
    if kind == "softbounds":
        assert np.all(arrays["b_min"] < 0.0)
        assert np.all(arrays["b_max"] > 0.0)
        assert np.all(arrays["alpha_up"] > 0.0)
        assert np.all(arrays["alpha_down"] > 0.0)
        assert np.all(arrays["conductance"] >= arrays["b_min"])
        assert np.all(arrays["conductance"] <= arrays["b_max"])
    else:
        assert np.all(np.isposinf(arrays["b_max"]))
        assert np.all(np.isneginf(arrays["b_min"]))


def test_initial_state_matches_network(completed_run):
    _, out, config = completed_run
    network = CrossbarMLP(config)

    with h5py.File(out, "r") as result:
        for layer in network.layers:
            group = result[f"layers/layer_{layer.index}"]
            np.testing.assert_array_equal(group["conductance_initial"][...], layer.conductance)
            np.testing.assert_array_equal(group["b_max"][...], layer.params.b_max)
            np.testing.assert_array_equal(group["alpha_up"][...], layer.params.alpha_up)


def test_column_reference_shape(tmp_path, mnist_dir):
    out = tmp_path / "column.h5"
    args = [
        "train",
        "--reference", "column",
        "--train-limit", "50",
        "--test-limit", "50",
        "--epochs", "1",
        "--data-dir", str(mnist_dir),
        "--out", str(out),
        "--no-progress",
    ]

    status = run_cli(args)

    assert status == 0
    with h5py.File(out, "r") as result:
        for index, (n_in, n_out) in enumerate(LAYER_SIZES):
            group = result[f"layers/layer_{index}"]
            column_tiles = len(group.attrs["col_bounds"]) - 1
            assert group.attrs["reference_layout"] == "column"
            assert group["reference"].shape == (n_out, column_tiles)
            assert group["conductance"].shape == (n_out, n_in + 1)
        assert result["layers/layer_0/reference"].shape == (256, 2)


# ---------------------------------------------------------------------------
# Stopped runs
# ---------------------------------------------------------------------------

SMALL_TRAIN = 40
SMALL_TEST = 50


def small_config(epochs: int) -> Config:
    return Config().replace(
        {
            "training.epochs": epochs,
            "training.train_limit": SMALL_TRAIN,
            "training.test_limit": SMALL_TEST,
        }
    )


def stop_after(monkeypatch, samples_before_stop: int, error: BaseException, snapshots: list | None = None):
    """Make CrossbarMLP.train_samples raise ``error`` once ``samples_before_stop`` are trained.

    The call that would cross that count trains up to it, then raises, as a Ctrl-C during
    that call would. With ``snapshots``, the
    conductances of every layer are appended to it at the start of each epoch after the
    first, before that epoch changes them.
    """
    original = CrossbarMLP.train_samples
    trained = 0

    def train_samples(self, images, labels, order, start, stop, learning_rate, first_update):
        nonlocal trained
        if snapshots is not None and start == 0 and stop > 0 and trained > 0:
            snapshots.append([layer.conductance.copy() for layer in self.layers])
        if trained + (stop - start) > samples_before_stop:
            allowed = samples_before_stop - trained
            if allowed > 0:
                original(self, images, labels, order, start, start + allowed, learning_rate, first_update)
            raise error
        trained += stop - start
        return original(self, images, labels, order, start, stop, learning_rate, first_update)

    monkeypatch.setattr(CrossbarMLP, "train_samples", train_samples)


def train_small(config: Config, data: mnist.MnistData, result: ResultFile, network: CrossbarMLP | None = None):
    return train(
        config,
        data.train_images[:SMALL_TRAIN],
        data.train_labels[:SMALL_TRAIN],
        data.test_images[:SMALL_TEST],
        data.test_labels[:SMALL_TEST],
        result=result,
        network=network,
    )


def test_interrupt_keeps_finished_epoch(tmp_path, mnist_data, monkeypatch):
    config = small_config(epochs=3)
    network = CrossbarMLP(config)
    path = tmp_path / "interrupted.h5"
    result = ResultFile(path)
    snapshots: list = []
    stop_after(monkeypatch, SMALL_TRAIN + SMALL_TRAIN // 2, KeyboardInterrupt(), snapshots)

    with pytest.raises(KeyboardInterrupt):
        train_small(config, mnist_data, result, network)

    assert not result.file.id.valid
    assert len(snapshots) == 1
    with h5py.File(path, "r") as stored:
        assert stored.attrs["status"] == "interrupted"
        assert stored.attrs["stopped_early"] == True  # noqa: E712 (numpy bool)
        assert stored.attrs["epochs_completed"] == 1
        metrics = stored["metrics"][...]
        assert metrics.shape == (1,)
        assert metrics["epoch"].tolist() == [1]
        for layer, after_epoch_1 in zip(network.layers, snapshots[0]):
            conductance = stored[f"layers/layer_{layer.index}/conductance"]
            assert conductance.attrs["epoch"] == 1
            np.testing.assert_array_equal(conductance[...], after_epoch_1)
        # The half epoch after the last saved one changed the network but not the file.
        assert not np.array_equal(stored["layers/layer_0/conductance"][...], network.layers[0].conductance)


def test_interrupt_in_first_epoch(tmp_path, mnist_data, monkeypatch):
    config = small_config(epochs=2)
    path = tmp_path / "interrupted.h5"
    result = ResultFile(path)
    stop_after(monkeypatch, SMALL_TRAIN // 2, KeyboardInterrupt())

    with pytest.raises(KeyboardInterrupt):
        train_small(config, mnist_data, result)

    with h5py.File(path, "r") as stored:
        assert stored.attrs["status"] == "interrupted"
        assert stored.attrs["epochs_completed"] == 0
        assert stored["metrics"].shape == (0,)
        assert stored["layers/layer_0/conductance"].attrs["epoch"] == 0
        np.testing.assert_array_equal(
            stored["layers/layer_0/conductance"][...], stored["layers/layer_0/conductance_initial"][...]
        )


def test_error_marks_run_failed(tmp_path, mnist_data, monkeypatch):
    config = small_config(epochs=3)
    path = tmp_path / "failed.h5"
    result = ResultFile(path)
    stop_after(monkeypatch, SMALL_TRAIN + 5, RuntimeError("kernel failure"))

    with pytest.raises(RuntimeError, match="kernel failure"):
        train_small(config, mnist_data, result)

    with h5py.File(path, "r") as stored:
        assert stored.attrs["status"] == "failed"
        assert stored.attrs["stopped_early"] == True  # noqa: E712 (numpy bool)
        assert stored.attrs["epochs_completed"] == 1
        assert stored["metrics"]["epoch"].tolist() == [1]


def test_cli_interrupt_exit_status(tmp_path, mnist_dir, monkeypatch):
    out = tmp_path / "interrupted.h5"
    stop_after(monkeypatch, SMALL_TRAIN + 10, KeyboardInterrupt())
    args = [
        "train",
        "--train-limit", str(SMALL_TRAIN),
        "--test-limit", str(SMALL_TEST),
        "--epochs", "2",
        "--data-dir", str(mnist_dir),
        "--out", str(out),
        "--no-progress",
    ]

    status = run_cli(args)

    assert status == 130
    with h5py.File(out, "r") as stored:
        assert stored.attrs["status"] == "interrupted"
        assert stored["metrics"]["epoch"].tolist() == [1]
