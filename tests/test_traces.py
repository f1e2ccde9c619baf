"""Tests of per-device traces: cell selection, cadence, file layout, stops and ``crossbar-emu traces``.

Most tests train a 16-12-10 network on random inputs, which takes a fraction of a second. The
signal tests run ``python -m crossbar_emu train`` on real MNIST in a subprocess and are skipped
when CROSSBAR_EMU_DATA is unset.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from crossbar_emu import cli, mnist
from crossbar_emu.config import Config, ConfigError, TraceConfig, config_from_dict, load_config
from crossbar_emu.network import CrossbarMLP
from crossbar_emu.results import SCHEMA_VERSION, TRACE_FIELDS, ResultFile, TraceWriter
from crossbar_emu.traces import (
    CSV_COLUMNS,
    MAX_FULL_LAYER_CELLS,
    DeviceHealth,
    TracedCells,
    chunk_bounds,
    health_postfix,
    network_shapes,
    pulse_totals,
    select_cells,
)
from crossbar_emu.training import train

N_INPUTS = 16
N_TRAIN = 290
N_TEST = 40
EVERY = 25
# (n_out, n_in + 1) of the 16-12-10 network.
SHAPES = [(12, 17), (10, 13)]


def run_main(args: list[str]) -> int:
    """Run the CLI in-process and return its exit status, whether returned or raised."""
    try:
        return cli.main(args)
    except SystemExit as exit_request:
        return exit_request.code


def random_data(seed: int = 0):
    """Return sparse random inputs in [0, 1] and labels 0 to 9, with MNIST's dtypes."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    images = (rng.random((n, N_INPUTS)) < 0.5) * rng.random((n, N_INPUTS))
    images = images.astype(np.float32)
    labels = rng.integers(0, 10, n).astype(np.int64)
    return images[:N_TRAIN], labels[:N_TRAIN], images[N_TRAIN:], labels[N_TRAIN:]


def small_config(**trace) -> Config:
    # One Numba thread: the tiny layers gain nothing from two, and on a busy machine the
    # parallel regions of two threads wait for each other.
    overrides = {
        "network.hidden": [12],
        "training.epochs": 2,
        "training.seed": 5,
        "training.lr": 0.05,
        "run.threads": 1,
    }
    overrides.update({f"trace.{key}": value for key, value in trace.items()})
    return Config().replace(overrides)


def layer_state(network: CrossbarMLP) -> list[dict[str, np.ndarray]]:
    """Return a copy of every traced quantity of every layer, on the full layer shape."""
    return [
        {
            "g": layer.conductance.copy(),
            "g_ref": layer.reference.copy(),
            "w": layer.weights.copy(),
            "n_up": layer.cell_pulses_up.copy(),
            "n_down": layer.cell_pulses_down.copy(),
        }
        for layer in network.layers
    ]


def record_calls(monkeypatch, snapshots: dict, calls: list | None = None, stop_at: int | None = None):
    """Wrap CrossbarMLP.train_samples to snapshot the layers after each call.

    ``snapshots`` maps the samples done since the start of the run to the layer state then.
    ``calls`` collects each call's (start, stop). With ``stop_at``, the call that crosses that
    sample count trains up to it and raises KeyboardInterrupt, as a Ctrl-C would.
    """
    original = CrossbarMLP.train_samples

    def train_samples(self, images, labels, order, start, stop, learning_rate, first_update):
        if stop_at is not None and first_update + (stop - start) > stop_at:
            allowed = stop_at - first_update
            original(self, images, labels, order, start, start + allowed, learning_rate, first_update)
            snapshots[stop_at] = layer_state(self)
            raise KeyboardInterrupt
        result = original(self, images, labels, order, start, stop, learning_rate, first_update)
        snapshots[first_update + (stop - start)] = layer_state(self)
        if calls is not None and stop > start:
            calls.append((start, stop))
        return result

    monkeypatch.setattr(CrossbarMLP, "train_samples", train_samples)


def train_traced(path: Path, config: Config, data=None) -> CrossbarMLP:
    """Train ``config`` on random data into a result file at ``path``; return the network."""
    train_x, train_y, test_x, test_y = data or random_data()
    network = CrossbarMLP(config, n_inputs=N_INPUTS)
    train(config, train_x, train_y, test_x, test_y, result=ResultFile(path), network=network)
    return network


def expected_samples(epochs: int) -> tuple[list[int], list[int]]:
    """Return the sample counts and epochs of the records of a run of ``epochs`` epochs."""
    samples = [0]
    epoch_of = [0]
    for epoch in range(1, epochs + 1):
        base = (epoch - 1) * N_TRAIN
        points = list(range(EVERY, N_TRAIN, EVERY)) + [N_TRAIN]
        samples.extend(base + point for point in points)
        epoch_of.extend([epoch] * len(points))
    return samples, epoch_of


@pytest.fixture(scope="module")
def traced_file(tmp_path_factory) -> Path:
    """A completed two-epoch run with random cells, a row, a column and a whole layer traced."""
    path = tmp_path_factory.mktemp("traced") / "run.h5"
    config = small_config(random_cells=4, rows=[[0, 3]], cols=[[0, 16]], all_layers=[1], every=EVERY, flush_records=7)
    train_traced(path, config)
    return path


# ---------------------------------------------------------------------------
# Configuration and selection
# ---------------------------------------------------------------------------


def test_trace_config_defaults_inactive():
    trace = Config().trace

    assert not trace.active
    assert trace.every == 1000
    assert trace.flush_records == 100


def test_trace_config_lists_become_tuples():
    trace = TraceConfig(cells=[[0, 1, 2]], rows=[[1, 0]], cols=[[0, 5]], all_layers=[2])

    assert trace.cells == ((0, 1, 2),)
    assert trace.rows == ((1, 0),)
    assert trace.cols == ((0, 5),)
    assert trace.all_layers == (2,)
    assert trace.active


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("trace.cells", [[0, 1]], "[layer, row, column]"),
        ("trace.cells", [[0, -1, 2]], "must be in [0, inf)"),
        ("trace.rows", [[0, 1, 2]], "[layer, row]"),
        ("trace.cols", "0,1", "list of [layer, column]"),
        ("trace.all_layers", ["a"], "must be an integer"),
        ("trace.random_cells", -1, "must be in [0, inf)"),
        ("trace.every", 0, "must be in [1, inf)"),
        ("trace.flush_records", 0, "must be in [1, inf)"),
    ],
)
def test_trace_config_rejects(key, value, fragment):
    with pytest.raises(ConfigError) as excinfo:
        Config().replace({key: value})

    assert excinfo.value.key == key
    assert fragment in excinfo.value.rule


def test_trace_section_in_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[trace]\nrandom_cells = 3\ncells = [[2, 1, 5]]\nevery = 50\n")

    config = load_config(path)

    assert config.trace.random_cells == 3
    assert config.trace.cells == ((2, 1, 5),)
    assert config.trace.every == 50


def test_select_explicit_rows_cols():
    config = small_config(cells=[[1, 9, 12], [0, 0, 0]], rows=[[0, 2]], cols=[[1, 3]])

    selections = select_cells(config, SHAPES)

    rows, cols = selections[0]
    assert list(zip(rows, cols)) == [(0, 0)] + [(2, col) for col in range(17)]
    rows, cols = selections[1]
    assert list(zip(rows, cols)) == sorted({(row, 3) for row in range(10)} | {(9, 12)})


def test_select_merges_duplicates():
    config = small_config(cells=[[0, 2, 5], [0, 2, 5]], rows=[[0, 2]])

    rows, cols = select_cells(config, SHAPES)[0]

    assert len(rows) == 17
    assert len(set(zip(rows, cols))) == 17


def test_select_whole_layer():
    config = small_config(all_layers=[1])

    selections = select_cells(config, SHAPES)

    assert len(selections[0][0]) == 0
    rows, cols = selections[1]
    assert len(rows) == 10 * 13
    assert list(zip(rows[:3], cols[:3])) == [(0, 0), (0, 1), (0, 2)]


def test_select_random_is_seeded():
    first = select_cells(small_config(random_cells=6), SHAPES)
    again = select_cells(small_config(random_cells=6), SHAPES)
    other_seed = select_cells(small_config(random_cells=6).replace({"training.seed": 6}), SHAPES)

    for (rows, cols), (rows_again, cols_again) in zip(first, again):
        assert len(rows) == 6
        np.testing.assert_array_equal(rows, rows_again)
        np.testing.assert_array_equal(cols, cols_again)
    assert any(not np.array_equal(a[0] * 100 + a[1], b[0] * 100 + b[1]) for a, b in zip(first, other_seed))


def test_select_random_caps_at_layer_size():
    rows, _ = select_cells(small_config(random_cells=500), SHAPES)[1]

    assert len(rows) == 10 * 13


@pytest.mark.parametrize(
    ("trace", "key", "fragment"),
    [
        ({"cells": [[2, 0, 0]]}, "trace.cells", "layer 2 does not exist; the network has layers 0 to 1"),
        ({"cells": [[0, 12, 0]]}, "trace.cells", "row 12 is outside layer 0, which has rows 0 to 11"),
        ({"cells": [[0, 0, 17]]}, "trace.cells", "column 17 is outside layer 0, which has columns 0 to 16 (16 is the bias)"),
        ({"rows": [[1, 10]]}, "trace.rows", "row 10 is outside layer 1"),
        ({"cols": [[1, 13]]}, "trace.cols", "column 13 is outside layer 1"),
        ({"all_layers": [3]}, "trace.all_layers", "layer 3 does not exist"),
    ],
)
def test_select_rejects_outside_network(trace, key, fragment):
    with pytest.raises(ConfigError) as excinfo:
        select_cells(small_config(**trace), SHAPES)

    assert excinfo.value.key == key
    assert fragment in excinfo.value.rule


def test_select_rejects_large_whole_layer():
    shapes = network_shapes(Config())

    with pytest.raises(ConfigError) as excinfo:
        select_cells(Config().replace({"trace.all_layers": [1]}), shapes)

    assert excinfo.value.key == "trace.all_layers"
    assert "32,896 cells (128 x 257)" in excinfo.value.rule
    assert f"{MAX_FULL_LAYER_CELLS:,}" in excinfo.value.rule
    assert len(select_cells(Config().replace({"trace.all_layers": [2]}), shapes)[2][0]) == 10 * 129


def test_select_rejects_cadence_off_batches():
    config = small_config(random_cells=2, every=25).replace({"training.batch_size": 10})

    with pytest.raises(ConfigError) as excinfo:
        select_cells(config, SHAPES)

    assert excinfo.value.key == "trace.every"
    assert "multiple of training.batch_size = 10" in excinfo.value.rule


def test_network_shapes_default():
    assert network_shapes(Config()) == [(256, 785), (128, 257), (10, 129)]


def test_chunk_bounds():
    assert chunk_bounds(1200, 500, None) == [0, 500, 1000, 1200]
    assert chunk_bounds(1200, 500, 300) == [0, 300, 500, 600, 900, 1000, 1200]
    assert chunk_bounds(290, 500, 25) == list(range(0, 290, 25)) + [290]


# ---------------------------------------------------------------------------
# Recording: cadence and equality with the layers' state
# ---------------------------------------------------------------------------


def test_records_equal_layer_state(tmp_path, monkeypatch):
    snapshots: dict = {}
    calls: list = []
    record_calls(monkeypatch, snapshots, calls)
    config = small_config(random_cells=5, cells=[[1, 9, 12]], every=EVERY, flush_records=7)
    path = tmp_path / "run.h5"
    network = CrossbarMLP(config, n_inputs=N_INPUTS)
    snapshots[0] = layer_state(network)
    train_x, train_y, test_x, test_y = random_data()

    train(config, train_x, train_y, test_x, test_y, result=ResultFile(path), network=network)

    samples, epochs = expected_samples(2)
    with h5py.File(path, "r") as stored:
        step = stored["traces/step"][...]
        assert step["sample"].tolist() == samples
        assert step["epoch"].tolist() == epochs
        for index in range(2):
            group = stored[f"traces/layer_{index}"]
            rows, cols = group["rows"][...], group["cols"][...]
            for name in TRACE_FIELDS:
                series = group[name][...]
                assert series.shape == (len(samples), len(rows)), name
                for record, sample in enumerate(samples):
                    expected = snapshots[sample][index][name][rows, cols]
                    np.testing.assert_array_equal(series[record], expected, err_msg=f"{name} at sample {sample}")
    assert snapshots[samples[-1]][1]["n_up"].sum() > 0
    # Every call ends on a record point or a 500-sample chunk boundary within the epoch.
    for start, stop in calls:
        assert stop - start <= EVERY
        assert stop % EVERY == 0 or stop == N_TRAIN


def test_epoch_pulse_totals(tmp_path, monkeypatch):
    snapshots: dict = {}
    record_calls(monkeypatch, snapshots)
    path = tmp_path / "run.h5"

    network = train_traced(path, small_config(random_cells=2, every=EVERY))

    with h5py.File(path, "r") as stored:
        for layer in network.layers:
            group = stored[f"traces/layer_{layer.index}"]
            assert group["epoch_pulses_up"].shape == (2, *layer.shape)
            for epoch in (1, 2):
                state = snapshots[epoch * N_TRAIN][layer.index]
                np.testing.assert_array_equal(group["epoch_pulses_up"][epoch - 1], state["n_up"])
                np.testing.assert_array_equal(group["epoch_pulses_down"][epoch - 1], state["n_down"])
            np.testing.assert_array_equal(group["epoch_pulses_up"][1], layer.cell_pulses_up)


def test_mini_batch_records(tmp_path):
    config = small_config(random_cells=3, every=EVERY).replace({"training.batch_size": 5})
    path = tmp_path / "run.h5"

    network = train_traced(path, config)

    samples, _ = expected_samples(2)
    with h5py.File(path, "r") as stored:
        assert stored["traces/step"]["sample"].tolist() == samples
        for layer in network.layers:
            group = stored[f"traces/layer_{layer.index}"]
            rows, cols = group["rows"][...], group["cols"][...]
            np.testing.assert_array_equal(group["g"][-1], layer.conductance[rows, cols])
            np.testing.assert_array_equal(group["n_down"][-1], layer.cell_pulses_down[rows, cols])


def test_no_trace_group_without_selection(tmp_path):
    path = tmp_path / "run.h5"

    train_traced(path, small_config(every=EVERY))

    with h5py.File(path, "r") as stored:
        assert "traces" not in stored
        assert stored.attrs["stopped_early"] == False  # noqa: E712 (numpy bool)


def test_traced_cells_read():
    config = small_config(cells=[[0, 1, 2], [1, 3, 12]])
    network = CrossbarMLP(config, n_inputs=N_INPUTS)
    network.layers[1].weights_t[12, 3] = 0.125
    network.layers[1].conductance[3, 12] = 0.375
    selections = select_cells(config, [layer.shape for layer in network.layers])

    values = TracedCells(selections, network.layers).read(network.layers)

    assert values[1]["w"].tolist() == [0.125]
    assert values[1]["g"].tolist() == [0.375]
    assert values[0]["g"].tolist() == [network.layers[0].conductance[1, 2]]


# ---------------------------------------------------------------------------
# File layout
# ---------------------------------------------------------------------------


def test_layout_root(traced_file):
    with h5py.File(traced_file, "r") as stored:
        assert stored.attrs["schema_version"] == SCHEMA_VERSION == 2
        assert stored.attrs["status"] == "completed"
        assert stored.attrs["stopped_early"] == False  # noqa: E712 (numpy bool)
        traces = stored["traces"]
        assert traces.attrs["every"] == EVERY
        assert traces.attrs["flush_records"] == 7
        assert traces.attrs["random_cells"] == 4
        for value in traces.attrs.values():
            assert np.ndim(value) == 0


def test_layout_step(traced_file):
    samples, epochs = expected_samples(2)

    with h5py.File(traced_file, "r") as stored:
        step = stored["traces/step"]
        assert step.dtype.names == ("sample", "epoch")
        assert step.maxshape == (None,)
        assert step.chunks is not None
        assert step["sample"].tolist() == samples
        assert step["epoch"].tolist() == epochs


@pytest.mark.parametrize("index", [0, 1])
def test_layout_layer(traced_file, index):
    n_out, n_cols = SHAPES[index]
    n_records = len(expected_samples(2)[0])

    with h5py.File(traced_file, "r") as stored:
        group = stored[f"traces/layer_{index}"]
        n_cells = group["rows"].shape[0]
        assert group["cols"].shape == (n_cells,)
        for name, (dtype, units, _) in TRACE_FIELDS.items():
            dataset = group[name]
            assert dataset.shape == (n_records, n_cells), name
            assert dataset.maxshape == (None, n_cells), name
            assert dataset.dtype == dtype, name
            assert dataset.chunks[1] <= n_cells, name
            assert dataset.compression is not None, name
            assert dataset.attrs["units"] == units, name
        for name in ("epoch_pulses_up", "epoch_pulses_down"):
            dataset = group[name]
            assert dataset.shape == (2, n_out, n_cols), name
            assert dataset.maxshape == (None, n_out, n_cols), name
            assert dataset.compression == "gzip", name
            assert dataset.attrs["units"] == "count", name


def test_layout_selection_matches_config(traced_file):
    with h5py.File(traced_file, "r") as stored:
        config = config_from_dict(json.loads(stored.attrs["config"]))
        selections = select_cells(config, SHAPES)
        # Layer 0: row 3 (17 cells) and column 16 (12 cells) share cell (3, 16), plus
        # 4 random cells, some of which may fall on the row or the column.
        assert 28 <= len(selections[0][0]) <= 32
        assert len(selections[1][0]) == 10 * 13
        for index, (rows, cols) in enumerate(selections):
            np.testing.assert_array_equal(stored[f"traces/layer_{index}/rows"][...], rows)
            np.testing.assert_array_equal(stored[f"traces/layer_{index}/cols"][...], cols)


def test_every_dataset_described(traced_file):
    described = []

    def check(name, item):
        if isinstance(item, h5py.Dataset):
            assert item.attrs.get("units"), name
            assert item.attrs.get("description"), name
            described.append(name)

    with h5py.File(traced_file, "r") as stored:
        stored.visititems(check)

    assert "traces/step" in described
    assert "traces/layer_1/epoch_pulses_down" in described


# ---------------------------------------------------------------------------
# Stops: buffered records, repeated flushes, half-written epochs
# ---------------------------------------------------------------------------


def test_interrupt_flushes_buffer(tmp_path, monkeypatch):
    snapshots: dict = {}
    stop_at = N_TRAIN + 130
    record_calls(monkeypatch, snapshots, stop_at=stop_at)
    # A buffer larger than the run keeps every record in memory until the file is closed.
    config = small_config(random_cells=3, every=EVERY, flush_records=1000)
    path = tmp_path / "run.h5"
    network = CrossbarMLP(config, n_inputs=N_INPUTS)
    train_x, train_y, test_x, test_y = random_data()

    with pytest.raises(KeyboardInterrupt):
        train(config, train_x, train_y, test_x, test_y, result=ResultFile(path), network=network)

    samples, _ = expected_samples(2)
    samples_before_stop = [sample for sample in samples if sample <= N_TRAIN + 125]
    with h5py.File(path, "r") as stored:
        assert stored.attrs["status"] == "interrupted"
        assert stored.attrs["stopped_early"] == True  # noqa: E712 (numpy bool)
        assert stored.attrs["epochs_completed"] == 1
        assert stored["traces/step"]["sample"].tolist() == samples_before_stop
        group = stored["traces/layer_1"]
        rows, cols = group["rows"][...], group["cols"][...]
        assert group["g"].shape[0] == len(samples_before_stop)
        np.testing.assert_array_equal(group["g"][-1], snapshots[N_TRAIN + 125][1]["g"][rows, cols])
        assert group["epoch_pulses_up"].shape[0] == 1
        assert stored["metrics"].shape == (1,)


def test_repeated_flush_writes_once(tmp_path):
    config = small_config(random_cells=3)
    network = CrossbarMLP(config, n_inputs=N_INPUTS)
    selections = select_cells(config, SHAPES)
    cells = TracedCells(selections, network.layers)
    with h5py.File(tmp_path / "flush.h5", "w") as file:
        writer = TraceWriter(file, selections, network.layers, every=10, flush_records=50, random_cells=3)
        for sample in range(0, 40, 10):
            writer.append(sample, 1, cells.read(network.layers))

        writer.flush()
        # A flush interrupted after its last write, before it emptied the buffer.
        writer._count = 4
        writer.flush()
        writer.append(40, 1, cells.read(network.layers))
        writer.flush()

        assert file["traces/step"]["sample"].tolist() == [0, 10, 20, 30, 40]
        assert file["traces/layer_0/g"].shape == (5, 3)


def test_close_drops_half_written_epoch(tmp_path):
    config = small_config(random_cells=2)
    network = CrossbarMLP(config, n_inputs=N_INPUTS)
    result = ResultFile(tmp_path / "half.h5")
    result.write_header(config.to_json(), 5, 1)
    result.write_layers(network.layers, network.calibrations, config.zero_shift)
    result.create_traces(select_cells(config, SHAPES), network.layers, every=10, flush_records=5, random_cells=2)
    # As if append_epoch was interrupted after the pulse totals, before the metrics row.
    result.traces.write_epoch_pulses(1, network.layers)

    result.close("interrupted")

    with h5py.File(tmp_path / "half.h5", "r") as stored:
        assert stored.attrs["epochs_completed"] == 0
        assert stored["traces/layer_0/epoch_pulses_up"].shape[0] == 0
        assert stored["metrics"].shape == (0,)


def test_close_finishes_despite_second_interrupt(tmp_path, monkeypatch):
    config = small_config(random_cells=2)
    network = CrossbarMLP(config, n_inputs=N_INPUTS)
    selections = select_cells(config, SHAPES)
    result = ResultFile(tmp_path / "twice.h5")
    result.write_header(config.to_json(), 5, 1)
    result.write_layers(network.layers, network.calibrations, config.zero_shift)
    result.create_traces(selections, network.layers, every=10, flush_records=50, random_cells=2)
    result.traces.append(0, 0, TracedCells(selections, network.layers).read(network.layers))
    original = TraceWriter.flush
    interrupts = [KeyboardInterrupt()]

    def flush_once_interrupted(self):
        if interrupts:
            raise interrupts.pop()
        original(self)

    monkeypatch.setattr(TraceWriter, "flush", flush_once_interrupted)

    with pytest.raises(KeyboardInterrupt):
        result.close("interrupted")

    assert not result.file.id.valid
    with h5py.File(tmp_path / "twice.h5", "r") as stored:
        assert stored.attrs["status"] == "interrupted"
        assert stored.attrs["stopped_early"] == True  # noqa: E712 (numpy bool)
        assert stored["traces/step"].shape == (1,)


# ---------------------------------------------------------------------------
# Device health
# ---------------------------------------------------------------------------


def test_near_bound_fraction():
    network = CrossbarMLP(small_config(), n_inputs=N_INPUTS)
    layer = network.layers[1]
    layer.conductance[...] = 0.0
    layer.conductance[0, 0] = layer.params.b_max[0, 0] * 0.995
    layer.conductance[0, 1] = layer.params.b_min[0, 1] * 0.995
    layer.conductance[0, 2] = layer.params.b_max[0, 2] * 0.98
    health = DeviceHealth(network.layers)

    fractions = health.near_bound(network.layers)

    assert fractions[1] == pytest.approx(2 / (10 * 13))


def test_near_bound_float_devices():
    network = CrossbarMLP(small_config().replace({"device.kind": "float"}), n_inputs=N_INPUTS)

    fractions = DeviceHealth(network.layers).near_bound(network.layers)

    assert fractions == [0.0, 0.0]


def test_health_fields():
    network = CrossbarMLP(small_config(), n_inputs=N_INPUTS)
    network.layers[0].cell_pulses_up[0, 0] = 7
    network.layers[1].cell_pulses_down[1, 1] = 3

    totals = pulse_totals(network.layers)
    fields = health_postfix([0.0125, 0.5], np.array([1234.4, 7.6]))

    assert totals.tolist() == [7, 3]
    assert fields == {"near bound %": "1.25/50.00", "pulses/sample": "1234/8"}


def test_epoch_health_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="crossbar_emu")

    train_traced(tmp_path / "run.h5", small_config())

    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("epoch 1 devices")]
    assert len(lines) == 1
    assert re.search(r"layer 0: \d+\.\d\d % within 1 % of a bound, \d+\.\d pulses/sample; layer 1: ", lines[0])


# ---------------------------------------------------------------------------
# crossbar-emu train: trace options
# ---------------------------------------------------------------------------


def test_train_options_reach_config(capsys):
    status = run_main(
        [
            "train", "--trace-cells", "8", "--trace-cell", "2,3,128", "--trace-cell", "0,0,784",
            "--trace-row", "1,5", "--trace-col", "2,0", "--trace-all-layer", "2",
            "--trace-every", "200", "--trace-flush", "20", "--print-config",
        ]
    )

    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "[trace]" in captured.out
    assert "cells = [[2, 3, 128], [0, 0, 784]]" in captured.out
    assert "rows = [[1, 5]]" in captured.out
    assert "cols = [[2, 0]]" in captured.out
    assert "all_layers = [2]" in captured.out
    assert "random_cells = 8" in captured.out
    assert "every = 200" in captured.out
    assert "flush_records = 20" in captured.out


def test_train_options_override_file(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text("[trace]\ncells = [[0, 1, 1]]\nevery = 50\n")

    status = run_main(["train", "--config", str(path), "--trace-cell", "1,2,3", "--print-config"])

    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "cells = [[1, 2, 3]]" in captured.out
    assert "every = 50" in captured.out


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (["--trace-all-layer", "1"], ["--trace-all-layer (trace.all_layers)", "32,896 cells (128 x 257)", "10,000"]),
        (["--trace-cell", "0,256,3"], ["--trace-cell (trace.cells)", "[0, 256, 3]", "row 256 is outside layer 0, which has rows 0 to 255"]),
        (["--trace-col", "2,129"], ["--trace-col (trace.cols)", "column 129 is outside layer 2"]),
        (["--trace-cell", "0,25"], ["--trace-cell", "LAYER,ROW,COL", "'0,25'"]),
        (["--trace-cells", "-1"], ["--trace-cells (trace.random_cells)", "must be in [0, inf)"]),
        (["--trace-every", "7", "--trace-cells", "2", "--batch-size", "2"], ["--trace-every (trace.every)", "multiple of training.batch_size = 2"]),
    ],
)
def test_train_rejects_trace_options(options, fragments, capsys, tmp_path):
    out = tmp_path / "never.h5"

    status = run_main(["train", *options, "--out", str(out), "--print-config"])

    err = capsys.readouterr().err
    assert status == 2
    for fragment in fragments:
        assert fragment in err
    assert not out.exists()


def test_train_warns_cadence_without_cells(capsys, caplog):
    caplog.set_level(logging.WARNING, logger="crossbar_emu")

    status = run_main(["train", "--trace-every", "50", "--print-config"])

    assert status == 0
    assert any("--trace-every and --trace-flush have no effect" in record.getMessage() for record in caplog.records)


# ---------------------------------------------------------------------------
# crossbar-emu traces
# ---------------------------------------------------------------------------


def test_traces_lists_file(traced_file, capsys):
    status = run_main(["traces", str(traced_file)])

    out = capsys.readouterr().out
    assert status == 0
    assert "status completed, stopped early: no, 2 epochs completed" in out
    assert f"25 records every {EVERY} samples" in out
    assert "from sample 0 (epoch 0) to sample 580 (epoch 2)" in out
    assert "layer 1: 10 x 13 devices, 130 traced (row,col):" in out
    assert "... and 90 more" in out
    assert re.search(r"layer 0: 12 x 17 devices, \d+ traced", out)


def test_traces_prints_cell(traced_file, capsys):
    status = run_main(["traces", str(traced_file), "--cell", "1,4,12"])

    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert lines[0].startswith("# layer 1, row 4, col 12 (bias): b_min -")
    assert lines[1].split() == ["step", "epoch", "g", "g_ref", "w", "n_up", "n_down"]
    assert len(lines) == 2 + 25
    with h5py.File(traced_file, "r") as stored:
        group = stored["traces/layer_1"]
        position = int(np.flatnonzero((group["rows"][...] == 4) & (group["cols"][...] == 12))[0])
        last_g = group["g"][-1, position]
        last_up = group["n_up"][-1, position]
    fields = lines[-1].split()
    assert fields[:2] == ["580", "2"]
    assert float(fields[2]) == pytest.approx(last_g, abs=1e-6)
    assert int(fields[5]) == last_up


def test_traces_csv_all(traced_file, tmp_path):
    out = tmp_path / "traces.csv"

    status = run_main(["traces", str(traced_file), "--csv", str(out)])

    assert status == 0
    with out.open(newline="") as stream:
        rows = list(csv.reader(stream))
    assert tuple(rows[0]) == CSV_COLUMNS
    with h5py.File(traced_file, "r") as stored:
        n_cells = [stored[f"traces/layer_{k}/rows"].shape[0] for k in range(2)]
        n_records = stored["traces/step"].shape[0]
        first_g = stored["traces/layer_0/g"][0, 0]
        last_w = stored["traces/layer_1/w"][-1, -1]
        last_down = stored["traces/layer_1/n_down"][-1, -1]
    assert len(rows) - 1 == n_records * sum(n_cells)
    assert rows[1][:5] == ["0", rows[1][1], rows[1][2], "0", "0"]
    assert float(rows[1][5]) == first_g
    assert rows[-1][:5] == ["1", "9", "12", "580", "2"]
    assert float(rows[-1][7]) == last_w
    assert int(rows[-1][9]) == last_down


def test_traces_csv_cells_stdout(traced_file, capsys):
    status = run_main(["traces", str(traced_file), "--cell", "1,0,0", "--cell", "1,9,12", "--csv", "-"])

    out = capsys.readouterr().out
    rows = list(csv.reader(io.StringIO(out)))
    assert status == 0
    assert len(rows) == 1 + 2 * 25
    assert {tuple(row[:3]) for row in rows[1:]} == {("1", "0", "0"), ("1", "9", "12")}
    assert [row[3] for row in rows[1:3]] == ["0", "0"]


def test_traces_plot(traced_file, tmp_path, caplog):
    pytest.importorskip("matplotlib")
    caplog.set_level(logging.INFO, logger="crossbar_emu")
    out = tmp_path / "traces.png"

    status = run_main(["traces", str(traced_file), "--plot", str(out)])

    assert status == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("drawing 12 of the" in record.getMessage() for record in caplog.records)


def test_traces_plot_cells(traced_file, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cell.png"

    status = run_main(["traces", str(traced_file), "--cell", "1,4,12", "--plot", str(out)])

    assert status == 0
    assert out.stat().st_size > 1000


def test_traces_plot_without_matplotlib(traced_file, tmp_path, monkeypatch, caplog):
    real_find_spec = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None if name == "matplotlib" else real_find_spec(name))

    status = run_main(["traces", str(traced_file), "--plot", str(tmp_path / "x.png")])

    assert status == 1
    assert any('pip install "crossbar-emu[plot]"' in record.getMessage() for record in caplog.records)
    assert not (tmp_path / "x.png").exists()


def test_traces_plot_without_records(tmp_path, caplog):
    config = small_config(random_cells=2)
    network = CrossbarMLP(config, n_inputs=N_INPUTS)
    result = ResultFile(tmp_path / "empty.h5")
    result.write_header(config.to_json(), 5, 1)
    result.write_layers(network.layers, network.calibrations, config.zero_shift)
    result.create_traces(select_cells(config, SHAPES), network.layers, every=10, flush_records=5, random_cells=2)
    result.close("interrupted")

    status = run_main(["traces", str(tmp_path / "empty.h5"), "--plot", str(tmp_path / "empty.png")])

    assert status == 1
    assert any("has no trace records to draw" in record.getMessage() for record in caplog.records)
    assert not (tmp_path / "empty.png").exists()


@pytest.mark.parametrize(
    ("cell", "fragment"),
    [
        ("0,12,0", "row 12 is outside layer 0, which has rows 0 to 11"),
        ("0,0,17", "column 17 is outside layer 0, which has columns 0 to 16 (16 is the bias)"),
        ("2,0,0", "layer 2 does not exist; the file has layers 0 to 1"),
        ("0,11,5", "cell 0,11,5 is not traced in"),
    ],
)
def test_traces_rejects_cell(traced_file, cell, fragment, capsys):
    status = run_main(["traces", str(traced_file), "--cell", cell])

    err = capsys.readouterr().err
    assert status == 2
    assert "invalid value for --cell" in err
    assert fragment in err


def test_traces_rejects_malformed_cell(traced_file, capsys):
    status = run_main(["traces", str(traced_file), "--cell", "1,x,2"])

    assert status == 2
    assert "expected LAYER,ROW,COL" in capsys.readouterr().err


def test_traces_rejects_too_many_plot_cells(traced_file, tmp_path, capsys):
    cells = [argument for column in range(13) for argument in ("--cell", f"1,0,{column}")]

    status = run_main(["traces", str(traced_file), *cells, "--plot", str(tmp_path / "x.png")])

    assert status == 2
    assert "--plot draws at most 12 cells; 13 --cell options were given" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["missing", "text", "newer", "untraced"])
def test_traces_rejects_file(kind, tmp_path, traced_file, caplog):
    path = tmp_path / "bad.h5"
    expected = {
        "missing": "file not found",
        "text": "is not an HDF5 file",
        "newer": f"has schema version {SCHEMA_VERSION + 1}, newer than the {SCHEMA_VERSION}",
        "untraced": "contains no traces",
    }[kind]
    if kind == "text":
        path.write_text("not hdf5\n")
    elif kind == "newer":
        path.write_bytes(traced_file.read_bytes())
        with h5py.File(path, "a") as file:
            file.attrs["schema_version"] = SCHEMA_VERSION + 1
    elif kind == "untraced":
        train_traced(path, small_config().replace({"training.epochs": 1}))

    status = run_main(["traces", str(path)])

    assert status == 1
    assert any(expected in record.getMessage() for record in caplog.records)


# ---------------------------------------------------------------------------
# Signals: a subprocess stopped by SIGINT or SIGTERM in the middle of an epoch
# ---------------------------------------------------------------------------

SIGNAL_TRAIN = 12000
SIGNAL_EVERY = 50


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    value = os.environ.get(mnist.ENV_VAR)
    if not value or not Path(value).is_dir():
        pytest.skip(f"{mnist.ENV_VAR} does not name the MNIST directory")
    return Path(value)


def stop_training(work: Path, mnist_dir: Path, signum: int) -> tuple[subprocess.CompletedProcess, Path]:
    """Start ``python -m crossbar_emu train`` in ``work`` and send ``signum`` during epoch 2.

    The signal goes out after the log line of epoch 1, plus a third of that epoch's time.
    """
    out = work / "stopped.h5"
    command = [
        sys.executable, "-m", "crossbar_emu", "train",
        "--train-limit", str(SIGNAL_TRAIN), "--test-limit", "200", "--epochs", "3", "--threads", "1",
        "--trace-cells", "16", "--trace-every", str(SIGNAL_EVERY), "--trace-flush", "8",
        "--data-dir", str(mnist_dir), "--out", str(out), "--no-progress",
    ]
    # SIGINT raises KeyboardInterrupt only where it was not ignored when Python started.
    process = subprocess.Popen(
        command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    stderr = []
    deadline = time.monotonic() + 120
    epoch_seconds = None
    while epoch_seconds is None and time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        stderr.append(line)
        match = re.search(r"epoch 1: .*, ([0-9.]+) s, ", line)
        if match:
            epoch_seconds = float(match.group(1))
    assert epoch_seconds is not None, "".join(stderr)
    time.sleep(epoch_seconds / 3)
    process.send_signal(signum)
    stdout, rest = process.communicate(timeout=60)
    return subprocess.CompletedProcess(command, process.returncode, stdout, "".join(stderr) + rest), out


def check_stopped_file(path: Path) -> None:
    """Check that a stopped run's file contains whole epochs and a gap-free prefix of the records."""
    with h5py.File(path, "r") as stored:
        assert stored.attrs["status"] == "interrupted"
        assert stored.attrs["stopped_early"] == True  # noqa: E712 (numpy bool)
        epochs = int(stored.attrs["epochs_completed"])
        assert 1 <= epochs <= 2
        assert stored["metrics"].shape == (epochs,)
        step = stored["traces/step"][...]
        per_epoch = list(range(SIGNAL_EVERY, SIGNAL_TRAIN + 1, SIGNAL_EVERY))
        expected = [0] + [(epoch - 1) * SIGNAL_TRAIN + point for epoch in (1, 2, 3) for point in per_epoch]
        assert step["sample"].tolist() == expected[: len(step)]
        # Every finished epoch is in, and the stopped epoch has records.
        assert step["sample"][-1] > epochs * SIGNAL_TRAIN
        for index in range(3):
            group = stored[f"traces/layer_{index}"]
            for name in TRACE_FIELDS:
                assert group[name].shape == (len(step), 16), name
            assert group["epoch_pulses_up"].shape[0] == epochs
            rows, cols = group["rows"][...], group["cols"][...]
            end_of_epoch = int(np.flatnonzero(step["sample"] == epochs * SIGNAL_TRAIN)[0])
            np.testing.assert_array_equal(group["n_up"][end_of_epoch], group["epoch_pulses_up"][epochs - 1][rows, cols])
            np.testing.assert_array_equal(group["g"][end_of_epoch], stored[f"layers/layer_{index}/conductance"][...][rows, cols])


@pytest.mark.mnist
@pytest.mark.slow
def test_sigint_keeps_records(tmp_path, mnist_dir, capsys):
    completed, out = stop_training(tmp_path, mnist_dir, signal.SIGINT)

    assert completed.returncode == 130, completed.stderr
    assert "interrupted; " in completed.stderr
    check_stopped_file(out)
    status = run_main(["traces", str(out)])
    listing = capsys.readouterr().out
    assert status == 0
    assert "status interrupted, stopped early: yes" in listing
    if importlib.util.find_spec("matplotlib") is not None:
        plot = tmp_path / "stopped.png"
        assert run_main(["traces", str(out), "--plot", str(plot)]) == 0
        assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.mnist
@pytest.mark.slow
def test_sigterm_keeps_records(tmp_path, mnist_dir):
    completed, out = stop_training(tmp_path, mnist_dir, signal.SIGTERM)

    assert completed.returncode == 128 + signal.SIGTERM, completed.stderr
    assert "SIGTERM; " in completed.stderr
    check_stopped_file(out)
