"""The HDF5 result file of a training run.

Layout (schema version 2):

- root attributes: ``schema_version``, ``package_version``, ``seed``, ``created`` (UTC,
  ISO 8601), ``config`` (the resolved configuration as JSON), ``status`` (``running``,
  ``completed``, ``interrupted`` or ``failed``), ``epochs_completed``, ``threads``,
  ``numba_version``, ``numpy_version``. When the file is closed, ``stopped_early`` is
  added: false for a completed run, true otherwise;
- ``metrics``: one row per finished epoch, a resizable compound dataset written and flushed
  at the end of each epoch, with the fields of METRICS_DTYPE: ``epoch``, ``learning_rate``,
  ``train_loss``, ``train_error``, ``test_loss``, ``test_error``, ``seconds``,
  ``samples_per_second``, ``pulses_up``, ``pulses_down``;
- ``layers/layer_<k>``: attributes ``n_in``, ``n_out``, ``out_scale``, ``row_bounds``,
  ``col_bounds``, ``reference_layout``, ``device_kind``; datasets ``alpha_up``,
  ``alpha_down``, ``b_max``, ``b_min``, ``reference``, ``conductance_initial`` and
  ``conductance`` (the state after the last finished epoch, attribute ``epoch``);
  zero-shifting: attributes ``zero_shift``, ``reference_error``, ``calibration_pairs``,
  ``calibration_average``, ``calibration_pulses``; datasets ``symmetry_point`` (closed form,
  softbounds only), ``symmetry_point_measured`` and ``calibration`` (per tile, pulsed only);
- ``traces``, only when cells are selected for tracing (``[trace]`` configuration), with
  attributes ``every`` (N, samples between records within an epoch), ``flush_records`` and
  ``random_cells``:

  - ``traces/step``: the time axis, one row per record, with fields ``sample`` (training
    samples done since the start of the run) and ``epoch`` (the epoch in progress, 0 for the
    record of the initial state). Records are taken before training, after every N samples
    of each epoch and at each epoch end;
  - ``traces/layer_<k>/rows`` and ``cols``: the traced cells, sorted by row, then column;
  - ``traces/layer_<k>/g``, ``g_ref``, ``w``, ``n_up``, ``n_down``: (records, cells), the
    conductance, the reference it is read against, the weight g - g_ref, and the running
    totals of up and down pulses, for layers with at least one traced cell;
  - ``traces/layer_<k>/epoch_pulses_up`` and ``epoch_pulses_down``: (epochs, n_out,
    n_in + 1), every cell's running pulse totals at the end of each finished epoch.

Datasets that grow are resizable, chunked along their first axis and compressed. Epoch rows
are written at the end of each epoch. Trace records are kept in memory and written in
batches of ``flush_records``, at each epoch end and when the file is closed, so a stopped
run keeps every record taken. The number of rows of ``traces/step`` is the number of
records, and every trace dataset has as many; the per-epoch datasets have
``epochs_completed`` rows.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from importlib import metadata
from pathlib import Path

import h5py
import numba
import numpy as np

from .config import ZeroShiftConfig
from .tiles import CrossbarLayer
from .zero_shift import Calibration

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2

METRICS_DTYPE = np.dtype(
    [
        ("epoch", np.int32),
        ("learning_rate", np.float64),
        ("train_loss", np.float64),
        ("train_error", np.float64),
        ("test_loss", np.float64),
        ("test_error", np.float64),
        ("seconds", np.float64),
        ("samples_per_second", np.float64),
        ("pulses_up", np.int64),
        ("pulses_down", np.int64),
    ]
)

METRICS_UNITS = "epoch: count; learning_rate: 1; losses: nats per sample; errors: fraction; seconds: s; samples_per_second: 1/s; pulses: count"

_LAYER_DATASETS = {
    "alpha_up": ("weight units", "α⁺, step of an up pulse at g = 0, per device"),
    "alpha_down": ("weight units", "α⁻, magnitude of the step of a down pulse at g = 0, per device"),
    "b_max": ("weight units", "upper soft bound of each device's conductance"),
    "b_min": ("weight units", "lower soft bound of each device's conductance"),
    "reference": (
        "weight units",
        "programmed reference conductance: (n_out, n_in + 1) for the cell layout, "
        "(n_out, column tiles) for the column layout",
    ),
    "conductance_initial": ("weight units", "device conductance g after programming the initial weights"),
    "conductance": ("weight units", "device conductance g after the last finished epoch"),
    "symmetry_point": ("weight units", "closed-form symmetry point w* of each device"),
    "symmetry_point_measured": (
        "weight units",
        "symmetry point read out after the alternating up/down pulse pairs, per device",
    ),
    "calibration": (
        "pulses: count; errors: weight units",
        "per tile: pulses spent measuring w*, and mean, standard deviation and maximum of "
        "|measured - closed form|, and the mean signed difference",
    ),
}


TRACE_STEP_DTYPE = np.dtype([("sample", np.int64), ("epoch", np.int32)])

# Time series of the traced cells: dtype, units and description of each.
TRACE_FIELDS = {
    "g": (np.float64, "weight units", "conductance g of each traced device, one row per record"),
    "g_ref": (np.float64, "weight units", "reference conductance g_ref that each traced cell is read against"),
    "w": (np.float64, "weight units", "weight w = g - g_ref of each traced cell, as the network uses it"),
    "n_up": (np.int64, "count", "up pulses each traced device received since training started, a running total"),
    "n_down": (np.int64, "count", "down pulses each traced device received since training started, a running total"),
}

_EPOCH_PULSES = {
    "epoch_pulses_up": "up pulses each device received from the start of training to the end of each finished epoch",
    "epoch_pulses_down": "down pulses each device received from the start of training to the end of each finished epoch",
}

# Largest chunk of a trace time series, in values: 64 Ki float64 values are 512 KiB, under
# h5py's default chunk cache of 1 MiB per dataset.
_TRACE_CHUNK_VALUES = 65536
_TRACE_CHUNK_RECORDS = 128

# The trace time series use LZF, which every h5py includes; other HDF5 readers need the LZF
# filter plugin (HDF5 filter 32000). Deflate compressed the conductances of active devices
# by only 1.1 to 1.2 times at about 60 MB/s (zlib level 1 on one core of a 2-core
# development machine), which doubled the time that tracing adds to training.
_TRACE_SERIES_FILTER = {"compression": "lzf", "shuffle": True}
# The per-epoch pulse totals are written once per epoch and shrink about 20 times with deflate.
_EPOCH_PULSES_FILTER = {"compression": "gzip", "compression_opts": 1, "shuffle": True}

# Attempts at finishing the file on close when further Ctrl-C interrupts arrive meanwhile.
_CLOSE_ATTEMPTS = 3


def _describe(dataset: h5py.Dataset, units: str, description: str) -> h5py.Dataset:
    dataset.attrs["units"] = units
    dataset.attrs["description"] = description
    return dataset


def package_version() -> str:
    try:
        return metadata.version("crossbar-emu")
    except metadata.PackageNotFoundError:
        return "unknown"


def default_result_path(now: datetime.datetime | None = None) -> Path:
    """Return runs/<UTC timestamp>.h5 under the working directory."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return Path("runs") / f"{now.strftime('%Y%m%dT%H%M%S')}.h5"


class ResultExistsError(FileExistsError):
    """The result file exists and overwriting was not requested."""


def check_writable(path: Path, overwrite: bool) -> None:
    """Raise before any work if the run could not create its result file at ``path``."""
    if path.is_dir():
        raise ResultExistsError(f"result path {path} is a directory; give a file name with --out")
    if path.exists() and not overwrite:
        raise ResultExistsError(
            f"result file {path} already exists; choose another --out or pass --overwrite to replace it"
        )


class TraceWriter:
    """Buffers the records of the traced cells and appends them to the ``traces`` group.

    A flush writes the buffered records to every trace dataset, then to ``traces/step``, so
    the length of ``step`` counts only complete records. A flush interrupted by Ctrl-C can
    be repeated: it rewrites the same rows, and it skips records already on disk.
    """

    def __init__(
        self,
        file: h5py.File,
        selections: list[tuple[np.ndarray, np.ndarray]],
        layers: list[CrossbarLayer],
        *,
        every: int,
        flush_records: int,
        random_cells: int,
    ):
        group = file.create_group("traces")
        group.attrs["every"] = every
        group.attrs["flush_records"] = flush_records
        group.attrs["random_cells"] = random_cells

        self._file = file
        self._capacity = flush_records
        self._count = 0
        chunk_records = min(flush_records, _TRACE_CHUNK_RECORDS)
        self._step = _describe(
            group.create_dataset(
                "step", shape=(0,), maxshape=(None,), dtype=TRACE_STEP_DTYPE, chunks=(max(chunk_records, 64),),
                **_TRACE_SERIES_FILTER,
            ),
            "sample: count; epoch: count",
            "time axis of the traces: training samples done since the start of the run, and the "
            "epoch in progress (0 for the initial state)",
        )
        self._step_buffer = np.zeros(flush_records, dtype=TRACE_STEP_DTYPE)

        # Per layer: {field: (dataset, buffer)} for the time series, empty without traced cells.
        self._series: list[dict[str, tuple[h5py.Dataset, np.ndarray]]] = []
        self._epoch_pulses: list[tuple[h5py.Dataset, h5py.Dataset]] = []
        for layer, (rows, cols) in zip(layers, selections):
            sub = group.create_group(f"layer_{layer.index}")
            _describe(sub.create_dataset("rows", data=np.asarray(rows, dtype=np.int64)), "index", "layer output (row) of each traced cell")
            _describe(
                sub.create_dataset("cols", data=np.asarray(cols, dtype=np.int64)),
                "index",
                f"layer input (column) of each traced cell; column {layer.n_in} is the bias",
            )

            n_cells = len(rows)
            series = {}
            if n_cells:
                chunks = (chunk_records, max(1, min(n_cells, _TRACE_CHUNK_VALUES // chunk_records)))
                for name, (dtype, units, description) in TRACE_FIELDS.items():
                    dataset = sub.create_dataset(
                        name, shape=(0, n_cells), maxshape=(None, n_cells), dtype=dtype, chunks=chunks,
                        **_TRACE_SERIES_FILTER,
                    )
                    series[name] = (_describe(dataset, units, description), np.zeros((flush_records, n_cells), dtype=dtype))
            self._series.append(series)

            shape = layer.cell_pulses_up.shape
            pulses = tuple(
                _describe(
                    sub.create_dataset(
                        name, shape=(0, *shape), maxshape=(None, *shape), dtype=np.int64, chunks=(1, *shape),
                        **_EPOCH_PULSES_FILTER,
                    ),
                    "count",
                    description + ", (epochs, n_out, n_in + 1)",
                )
                for name, description in _EPOCH_PULSES.items()
            )
            self._epoch_pulses.append(pulses)

    def append(self, sample: int, epoch: int, values: list[dict[str, np.ndarray] | None]) -> None:
        """Buffer one record and write the buffer out when it is full.

        ``values`` contains each layer's TRACE_FIELDS arrays, or None for a layer without
        traced cells.
        """
        row = self._count
        self._step_buffer[row] = (sample, epoch)
        for series, layer_values in zip(self._series, values):
            for name, (_, buffer) in series.items():
                buffer[row] = layer_values[name]
        # The record counts only once all of its values are in the buffer.
        self._count = row + 1
        if self._count == self._capacity:
            self.flush()

    def flush(self) -> None:
        """Write the buffered records and flush the file."""
        count = self._count
        if count == 0:
            return
        start = self._step.shape[0]
        if start > 0 and self._step[start - 1]["sample"] >= self._step_buffer[count - 1]["sample"]:
            # Samples increase from record to record, so these records are already on disk:
            # an earlier flush was interrupted after writing them.
            self._count = 0
            return
        stop = start + count
        for series in self._series:
            for dataset, buffer in series.values():
                dataset.resize(stop, axis=0)
                dataset[start:stop] = buffer[:count]
        self._step.resize((stop,))
        self._step[start:stop] = self._step_buffer[:count]
        self._count = 0
        self._file.flush()

    def write_epoch_pulses(self, epoch: int, layers: list[CrossbarLayer]) -> None:
        """Store every cell's running pulse totals as row ``epoch - 1``."""
        for (up, down), layer in zip(self._epoch_pulses, layers):
            for dataset, totals in ((up, layer.cell_pulses_up), (down, layer.cell_pulses_down)):
                dataset.resize(epoch, axis=0)
                dataset[epoch - 1] = totals

    def truncate(self, epochs: int) -> None:
        """Cut every dataset to the records in ``step`` and the per-epoch ones to ``epochs`` rows.

        Only a write interrupted half-way leaves longer datasets behind.
        """
        records = self._step.shape[0]
        for series in self._series:
            for dataset, _ in series.values():
                if dataset.shape[0] > records:
                    dataset.resize(records, axis=0)
        for pair in self._epoch_pulses:
            for dataset in pair:
                if dataset.shape[0] > epochs:
                    dataset.resize(epochs, axis=0)


class ResultFile:
    """Writes one run's results; the file is consistent after every finished epoch."""

    def __init__(self, path: str | Path, *, overwrite: bool = False):
        self.path = Path(path)
        check_writable(self.path, overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(self.path, "w" if overwrite else "x")
        self._metrics = self.file.create_dataset(
            "metrics", shape=(0,), maxshape=(None,), dtype=METRICS_DTYPE, chunks=(64,)
        )
        self._metrics.attrs["units"] = METRICS_UNITS
        self._metrics.attrs["description"] = "one row per finished epoch"
        self.file.attrs["epochs_completed"] = 0
        self.traces: TraceWriter | None = None

    def write_header(self, config_json: str, seed: int, threads: int) -> None:
        attrs = self.file.attrs
        attrs["schema_version"] = SCHEMA_VERSION
        attrs["package_version"] = package_version()
        attrs["seed"] = seed
        attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        attrs["config"] = config_json
        attrs["status"] = "running"
        attrs["epochs_completed"] = 0
        attrs["threads"] = threads
        attrs["numba_version"] = numba.__version__
        attrs["numpy_version"] = np.__version__
        self.file.flush()

    def write_layers(
        self, layers: list[CrossbarLayer], calibrations: list[Calibration], zero_shift: ZeroShiftConfig
    ) -> None:
        """Store each layer's geometry, device parameters, reference and initial state."""
        group = self.file.create_group("layers")
        for layer, calibration in zip(layers, calibrations):
            sub = group.create_group(f"layer_{layer.index}")
            sub.attrs["n_in"] = layer.n_in
            sub.attrs["n_out"] = layer.n_out
            sub.attrs["out_scale"] = layer.out_scale
            sub.attrs["row_bounds"] = layer.row_bounds
            sub.attrs["col_bounds"] = layer.col_bounds
            sub.attrs["reference_layout"] = layer.tile.reference
            sub.attrs["device_kind"] = layer.device.kind
            arrays = {
                "alpha_up": layer.params.alpha_up,
                "alpha_down": layer.params.alpha_down,
                "b_max": layer.params.b_max,
                "b_min": layer.params.b_min,
                "reference": layer.reference_values,
                "conductance_initial": layer.conductance,
                "conductance": layer.conductance,
            }
            if layer.is_pulsed:
                arrays["symmetry_point"] = calibration.closed_form
            if calibration.measured is not None:
                arrays["symmetry_point_measured"] = calibration.measured
                arrays["calibration"] = calibration.tiles
            sub.attrs["zero_shift"] = zero_shift.mode
            sub.attrs["reference_error"] = zero_shift.reference_error
            sub.attrs["calibration_pairs"] = zero_shift.pairs if zero_shift.mode == "pulsed" else 0
            sub.attrs["calibration_average"] = zero_shift.average if zero_shift.mode == "pulsed" else 0
            sub.attrs["calibration_pulses"] = calibration.pulses
            for name, array in arrays.items():
                dataset = sub.create_dataset(name, data=array, compression="gzip", compression_opts=4, shuffle=True)
                units, description = _LAYER_DATASETS[name]
                dataset.attrs["units"] = units
                dataset.attrs["description"] = description
            sub["conductance"].attrs["epoch"] = 0
        self.file.flush()

    def create_traces(
        self,
        selections: list[tuple[np.ndarray, np.ndarray]],
        layers: list[CrossbarLayer],
        *,
        every: int,
        flush_records: int,
        random_cells: int,
    ) -> TraceWriter:
        """Create the ``traces`` group for the (rows, cols) selected in each layer."""
        self.traces = TraceWriter(
            self.file, selections, layers, every=every, flush_records=flush_records, random_cells=random_cells
        )
        self.file.flush()
        return self.traces

    def append_epoch(self, row: dict, layers: list[CrossbarLayer]) -> None:
        """Store one finished epoch: trace records, pulse totals, conductances and metrics.

        The ``epochs_completed`` attribute is written last, so a file closed after an
        interrupted call keeps only whole epochs (see ``close``).
        """
        epoch = int(row["epoch"])
        if self.traces is not None:
            self.traces.flush()
            self.traces.write_epoch_pulses(epoch, layers)
        record = np.zeros(1, dtype=METRICS_DTYPE)
        for name in METRICS_DTYPE.names:
            record[name] = row[name]
        n = int(self.file.attrs["epochs_completed"])
        self._metrics.resize((n + 1,))
        self._metrics[n] = record[0]
        for layer in layers:
            dataset = self.file[f"layers/layer_{layer.index}/conductance"]
            dataset[...] = layer.conductance
            dataset.attrs["epoch"] = epoch
        self.file.attrs["epochs_completed"] = epoch
        self.file.flush()

    def close(self, status: str) -> None:
        """Write the buffered trace records, set ``status`` and ``stopped_early``, and close.

        ``stopped_early`` is false only for ``completed``. A Ctrl-C that arrives while the file
        is being finished is held back until the file is closed, then raised again.
        """
        if not self.file.id.valid:
            return
        interrupt: KeyboardInterrupt | None = None
        try:
            for _ in range(_CLOSE_ATTEMPTS):
                try:
                    self._finish(status)
                    break
                except KeyboardInterrupt as error:
                    interrupt = error
                    logger.warning("interrupted while closing %s; finishing the file before stopping", os.fspath(self.path))
        finally:
            self.file.close()
        logger.info("result file %s closed, status %s", os.fspath(self.path), status)
        if interrupt is not None:
            raise interrupt

    def _finish(self, status: str) -> None:
        if self.traces is not None:
            self.traces.flush()
        epochs = int(self.file.attrs["epochs_completed"])
        if self._metrics.shape[0] > epochs:
            self._metrics.resize((epochs,))
        if self.traces is not None:
            self.traces.truncate(epochs)
        self.file.attrs["stopped_early"] = status != "completed"
        self.file.attrs["status"] = status
        self.file.flush()


def read_config(path: str | Path) -> dict:
    """Return the resolved configuration stored in a result file."""
    with h5py.File(path, "r") as file:
        return json.loads(file.attrs["config"])
