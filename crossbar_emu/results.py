"""The HDF5 result file of a training run.

Layout (schema version 1):

- root attributes: ``schema_version``, ``package_version``, ``seed``, ``created`` (UTC,
  ISO 8601), ``config`` (the resolved configuration as JSON), ``status`` (``running``,
  ``completed``, ``interrupted`` or ``failed``), ``epochs_completed``, ``threads``,
  ``numba_version``, ``numpy_version``;
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
  softbounds only), ``symmetry_point_measured`` and ``calibration`` (per tile, pulsed only).
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

SCHEMA_VERSION = 1

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

    def append_epoch(self, row: dict, layers: list[CrossbarLayer]) -> None:
        """Append one metrics row and store the conductances reached, then flush."""
        record = np.zeros(1, dtype=METRICS_DTYPE)
        for name in METRICS_DTYPE.names:
            record[name] = row[name]
        n = self._metrics.shape[0]
        self._metrics.resize((n + 1,))
        self._metrics[n] = record[0]
        for layer in layers:
            dataset = self.file[f"layers/layer_{layer.index}/conductance"]
            dataset[...] = layer.conductance
            dataset.attrs["epoch"] = int(row["epoch"])
        self.file.attrs["epochs_completed"] = int(row["epoch"])
        self.file.flush()

    def close(self, status: str) -> None:
        if not self.file.id.valid:
            return
        self.file.attrs["status"] = status
        self.file.close()
        logger.info("result file %s closed, status %s", os.fspath(self.path), status)


def read_config(path: str | Path) -> dict:
    """Return the resolved configuration stored in a result file."""
    with h5py.File(path, "r") as file:
        return json.loads(file.attrs["config"])
