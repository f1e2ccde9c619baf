"""Per-device conductance traces: cell selection, snapshots, device health, and reading back.

A run with a ``[trace]`` selection records, for each selected cell, the conductance g, the
reference g_ref it is read against, the weight w = g - g_ref and the running totals of up
and down pulses. Records are taken between the compiled training calls, so the kernels do
no extra work. ``crossbar_emu.results`` documents the HDF5 layout. This module also reads
the traces back for ``crossbar-emu traces``: the listing, one cell's series, the CSV export
and the plot.
"""

from __future__ import annotations

import csv
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import h5py
import numpy as np

from .config import Config, ConfigError
from .network import SEED_TRACE_CELLS, child_rng
from .results import SCHEMA_VERSION, TRACE_FIELDS
from .tiles import CrossbarLayer

MAX_FULL_LAYER_CELLS = 10_000
"""Maximum number of cells in a layer that ``trace.all_layers`` traces whole."""

NEAR_BOUND_FRACTION = 0.01
"""A device is near a bound b when |g - b| < NEAR_BOUND_FRACTION |b|."""

HEALTH_INTERVAL = 5000
"""Training samples between two device-health measurements for the progress bar."""

MAX_PLOT_CELLS = 12
"""Maximum number of cells drawn in one plot, one panel each."""

CSV_COLUMNS = ("layer", "row", "col", "step", "epoch", "g", "g_ref", "w", "n_up", "n_down")

# (n_out, n_in + 1) of each layer.
Shape = tuple[int, int]
Selection = tuple[np.ndarray, np.ndarray]


# ---------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------


def network_shapes(config: Config, n_inputs: int = 784, n_classes: int = 10) -> list[Shape]:
    """Return the device array shape (n_out, n_in + 1) of each layer of the configured MLP."""
    widths = [n_inputs, *config.network.hidden, n_classes]
    return [(n_out, n_in + 1) for n_in, n_out in zip(widths[:-1], widths[1:])]


def _check_cell(key: str, entry: list[int], shapes: list[Shape], layer: int, row: int | None, col: int | None) -> None:
    if layer >= len(shapes):
        raise ConfigError(key, entry, f"layer {layer} does not exist; the network has layers 0 to {len(shapes) - 1}")
    n_out, n_cols = shapes[layer]
    if row is not None and row >= n_out:
        raise ConfigError(key, entry, f"row {row} is outside layer {layer}, which has rows 0 to {n_out - 1}")
    if col is not None and col >= n_cols:
        raise ConfigError(
            key, entry, f"column {col} is outside layer {layer}, which has columns 0 to {n_cols - 1} ({n_cols - 1} is the bias)"
        )


def select_cells(config: Config, shapes: list[Shape]) -> list[Selection]:
    """Return the traced (rows, cols) of each layer, sorted by row, then column.

    Combines every selection form of ``config.trace``. The random cells of layer k come from
    a stream keyed by the run seed and k. Raises ConfigError, naming the ``trace`` key, for
    an index outside the network, a whole layer above MAX_FULL_LAYER_CELLS cells, or a
    cadence that does not fall between mini-batches.
    """
    trace = config.trace
    batch_size = config.training.batch_size
    if trace.active and trace.every % batch_size != 0:
        raise ConfigError(
            "trace.every",
            trace.every,
            f"must be a multiple of training.batch_size = {batch_size}, because records are taken between mini-batches",
        )
    chosen: list[list[np.ndarray]] = [[] for _ in shapes]
    for entry in trace.cells:
        layer, row, col = entry
        _check_cell("trace.cells", list(entry), shapes, layer, row, col)
        chosen[layer].append(np.array([row * shapes[layer][1] + col]))
    for entry in trace.rows:
        layer, row = entry
        _check_cell("trace.rows", list(entry), shapes, layer, row, None)
        n_cols = shapes[layer][1]
        chosen[layer].append(row * n_cols + np.arange(n_cols))
    for entry in trace.cols:
        layer, col = entry
        _check_cell("trace.cols", list(entry), shapes, layer, None, col)
        n_out, n_cols = shapes[layer]
        chosen[layer].append(np.arange(n_out) * n_cols + col)
    for layer in trace.all_layers:
        _check_cell("trace.all_layers", layer, shapes, layer, None, None)
        n_out, n_cols = shapes[layer]
        if n_out * n_cols > MAX_FULL_LAYER_CELLS:
            raise ConfigError(
                "trace.all_layers",
                layer,
                f"layer {layer} has {n_out * n_cols:,} cells ({n_out} x {n_cols}), more than the "
                f"{MAX_FULL_LAYER_CELLS:,} that a whole-layer trace allows; trace rows, columns or a random sample instead",
            )
        chosen[layer].append(np.arange(n_out * n_cols))
    if trace.random_cells:
        for layer, (n_out, n_cols) in enumerate(shapes):
            rng = child_rng(config.training.seed, SEED_TRACE_CELLS, layer)
            count = min(trace.random_cells, n_out * n_cols)
            chosen[layer].append(rng.choice(n_out * n_cols, size=count, replace=False))

    selections = []
    for parts, (_, n_cols) in zip(chosen, shapes):
        flat = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        selections.append((flat // n_cols, flat % n_cols))
    return selections


class TracedCells:
    """Reads the state of the traced cells from the layers, in the order of the selection."""

    def __init__(self, selections: list[Selection], layers: list[CrossbarLayer]):
        # Flat indices into the C-ordered (n_out, n_cols) arrays, and into weights_t,
        # which is stored transposed.
        self._indices = []
        for (rows, cols), layer in zip(selections, layers):
            if len(rows) == 0:
                self._indices.append(None)
                continue
            self._indices.append((rows * layer.n_cols + cols, cols * layer.n_out + rows))

    def read(self, layers: list[CrossbarLayer]) -> list[dict[str, np.ndarray] | None]:
        """Return each layer's TRACE_FIELDS arrays for its traced cells, None for a layer without."""
        values: list[dict[str, np.ndarray] | None] = []
        for indices, layer in zip(self._indices, layers):
            if indices is None:
                values.append(None)
                continue
            flat, flat_t = indices
            values.append(
                {
                    "g": np.take(layer.conductance, flat),
                    "g_ref": np.take(layer.reference, flat),
                    "w": np.take(layer.weights_t, flat_t),
                    "n_up": np.take(layer.cell_pulses_up, flat),
                    "n_down": np.take(layer.cell_pulses_down, flat),
                }
            )
        return values


def chunk_bounds(n_samples: int, chunk: int, every: int | None) -> list[int]:
    """Return the boundaries of the compiled training calls within an epoch.

    Calls cover at most ``chunk`` samples. With ``every``, each multiple of it is a boundary
    too, so the traced cells can be read there.
    """
    bounds = set(range(0, n_samples, chunk))
    if every is not None:
        bounds.update(range(0, n_samples, every))
    bounds.add(n_samples)
    return sorted(bounds)


# ---------------------------------------------------------------------------
# Device health
# ---------------------------------------------------------------------------


class DeviceHealth:
    """Per-layer share of devices near a bound, from vectorised comparisons.

    A device is near a bound when |g - b| < 0.01 |b| for b = b_max or b = b_min. Unbounded
    (floating-point) devices have infinite bounds and are never near one.
    """

    def __init__(self, layers: list[CrossbarLayer]):
        self._bounds = [
            (
                layer.params.b_max,
                NEAR_BOUND_FRACTION * np.abs(layer.params.b_max),
                layer.params.b_min,
                NEAR_BOUND_FRACTION * np.abs(layer.params.b_min),
            )
            for layer in layers
        ]

    def near_bound(self, layers: list[CrossbarLayer]) -> list[float]:
        """Return, per layer, the fraction of devices within 1 % of either bound."""
        fractions = []
        for layer, (b_max, tolerance_max, b_min, tolerance_min) in zip(layers, self._bounds):
            g = layer.conductance
            near = np.abs(g - b_max) < tolerance_max
            near |= np.abs(g - b_min) < tolerance_min
            fractions.append(np.count_nonzero(near) / near.size)
        return fractions


def pulse_totals(layers: list[CrossbarLayer]) -> np.ndarray:
    """Return each layer's total up and down pulses since training started."""
    return np.array([int(layer.cell_pulses_up.sum()) + int(layer.cell_pulses_down.sum()) for layer in layers], dtype=np.int64)


def health_postfix(near_bound: list[float], pulses_per_sample: np.ndarray) -> dict[str, str]:
    """Return the progress-bar fields: percent near a bound and pulses per sample, per layer."""
    return {
        "near bound %": "/".join(f"{100 * fraction:.2f}" for fraction in near_bound),
        "pulses/sample": "/".join(f"{rate:.0f}" for rate in pulses_per_sample),
    }


def health_summary(near_bound: list[float], pulses_per_sample: np.ndarray) -> str:
    """Return a one-line, per-layer summary of the device health."""
    parts = [
        f"layer {index}: {100 * fraction:.2f} % within 1 % of a bound, {rate:.1f} pulses/sample"
        for index, (fraction, rate) in enumerate(zip(near_bound, pulses_per_sample))
    ]
    return "; ".join(parts)


# ---------------------------------------------------------------------------
# Reading traces back
# ---------------------------------------------------------------------------


class TraceFileError(Exception):
    """A result file that cannot be read for traces: missing, not HDF5, too new, no traces."""


class CellError(ValueError):
    """A requested cell that lies outside its layer or is not traced."""


@dataclass
class LayerTraces:
    """The traced cells of one layer in a result file."""

    index: int
    n_out: int
    n_cols: int
    rows: np.ndarray
    cols: np.ndarray

    @property
    def n_cells(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class CellRef:
    """One traced cell: its layer, row and column, and its position in the layer's datasets."""

    layer: int
    row: int
    col: int
    position: int

    def label(self, n_in: int) -> str:
        bias = " (bias)" if self.col == n_in else ""
        return f"layer {self.layer}, row {self.row}, col {self.col}{bias}"


class TraceReader:
    """Read access to the traces of a result file; use as a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise TraceFileError(f"{self.path}: file not found")
        if not h5py.is_hdf5(self.path):
            raise TraceFileError(f"{self.path} is not an HDF5 file; give a result file written by crossbar-emu train")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as error:
            if "lock" in str(error):
                raise TraceFileError(
                    f"cannot open {self.path}: another process has it open for writing, most likely a training "
                    f"run in progress; read it once the run has ended ({error})"
                ) from None
            raise TraceFileError(f"cannot open {self.path}: {error}") from None
        try:
            self._check_layout()
        except BaseException:
            self.file.close()
            raise
        group = self.file["traces"]
        self.every = int(group.attrs["every"])
        self.step = group["step"][...]
        self.layers: list[LayerTraces] = []
        for index in range(len(self.file["layers"])):
            layer_group = self.file[f"layers/layer_{index}"]
            sub = group[f"layer_{index}"]
            self.layers.append(
                LayerTraces(
                    index=index,
                    n_out=int(layer_group.attrs["n_out"]),
                    n_cols=int(layer_group.attrs["n_in"]) + 1,
                    rows=sub["rows"][...],
                    cols=sub["cols"][...],
                )
            )

    def _check_layout(self) -> None:
        version = self.file.attrs.get("schema_version")
        if version is None or "layers" not in self.file:
            raise TraceFileError(f"{self.path} is not a crossbar-emu result file: it has no schema_version or layers")
        if int(version) > SCHEMA_VERSION:
            raise TraceFileError(
                f"{self.path} has schema version {int(version)}, newer than the {SCHEMA_VERSION} that this "
                "crossbar-emu reads; upgrade crossbar-emu to read it"
            )
        if "traces" not in self.file:
            raise TraceFileError(
                f"{self.path} contains no traces: its run selected no cells "
                "(train with --trace-cells, --trace-cell, --trace-row, --trace-col or --trace-all-layer)"
            )

    def __enter__(self) -> "TraceReader":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    @property
    def n_records(self) -> int:
        return len(self.step)

    def find(self, layer: int, row: int, col: int) -> CellRef:
        """Return the traced cell at (layer, row, col); raise CellError if it is not traced."""
        if not 0 <= layer < len(self.layers):
            raise CellError(f"layer {layer} does not exist; the file has layers 0 to {len(self.layers) - 1}")
        traces = self.layers[layer]
        if not 0 <= row < traces.n_out:
            raise CellError(f"row {row} is outside layer {layer}, which has rows 0 to {traces.n_out - 1}")
        if not 0 <= col < traces.n_cols:
            raise CellError(
                f"column {col} is outside layer {layer}, which has columns 0 to {traces.n_cols - 1} "
                f"({traces.n_cols - 1} is the bias)"
            )
        matches = np.flatnonzero((traces.rows == row) & (traces.cols == col))
        if matches.size == 0:
            raise CellError(
                f"cell {layer},{row},{col} is not traced in {self.path}; "
                f"run 'crossbar-emu traces {self.path}' to list the {traces.n_cells} traced cells of layer {layer}"
            )
        return CellRef(layer, row, col, int(matches[0]))

    def all_cells(self) -> list[CellRef]:
        return [
            CellRef(traces.index, int(row), int(col), position)
            for traces in self.layers
            for position, (row, col) in enumerate(zip(traces.rows, traces.cols))
        ]

    def series(self, cell: CellRef) -> dict[str, np.ndarray]:
        """Return the TRACE_FIELDS time series of one cell, one value per record."""
        group = self.file[f"traces/layer_{cell.layer}"]
        return {name: group[name][: self.n_records, cell.position] for name in TRACE_FIELDS}

    def bounds(self, cell: CellRef) -> tuple[float, float]:
        """Return the device's (b_min, b_max), infinite for unbounded devices."""
        group = self.file[f"layers/layer_{cell.layer}"]
        return float(group["b_min"][cell.row, cell.col]), float(group["b_max"][cell.row, cell.col])

    def describe(self) -> str:
        """Return the listing of layers, traced cells and time span."""
        attrs = self.file.attrs
        lines = [
            f"{self.path}: status {attrs.get('status', 'unknown')}, "
            f"stopped early: {_yes_no(attrs.get('stopped_early'))}, "
            f"{int(attrs.get('epochs_completed', 0))} epochs completed",
        ]
        if self.n_records:
            first, last = self.step[0], self.step[-1]
            lines.append(
                f"{self.n_records} records every {self.every} samples of each epoch and at epoch ends, "
                f"from sample {first['sample']} (epoch {first['epoch']}) to sample {last['sample']} (epoch {last['epoch']})"
            )
        else:
            lines.append(f"no records yet (every {self.every} samples of each epoch and at epoch ends)")
        for traces in self.layers:
            header = f"layer {traces.index}: {traces.n_out} x {traces.n_cols} devices, {traces.n_cells} traced"
            if traces.n_cells == 0:
                lines.append(header)
                continue
            lines.append(header + " (row,col):")
            listed = [f"{row},{col}" for row, col in zip(traces.rows[:_LISTED_CELLS], traces.cols[:_LISTED_CELLS])]
            text = " ".join(listed)
            if traces.n_cells > _LISTED_CELLS:
                text += f" ... and {traces.n_cells - _LISTED_CELLS} more (--csv exports every cell)"
            lines.extend(textwrap.wrap(text, width=100, initial_indent="  ", subsequent_indent="  "))
        return "\n".join(lines)

    def format_series(self, cell: CellRef) -> str:
        """Return one cell's series as a table, one line per record."""
        traces = self.layers[cell.layer]
        b_min, b_max = self.bounds(cell)
        series = self.series(cell)
        lines = [
            f"# {cell.label(traces.n_cols - 1)}: b_min {b_min:.6g}, b_max {b_max:.6g} (weight units)",
            f"{'step':>9} {'epoch':>5} {'g':>12} {'g_ref':>12} {'w':>12} {'n_up':>9} {'n_down':>9}",
        ]
        for k in range(self.n_records):
            lines.append(
                f"{self.step[k]['sample']:9d} {self.step[k]['epoch']:5d} {series['g'][k]:12.6f} "
                f"{series['g_ref'][k]:12.6f} {series['w'][k]:12.6f} {series['n_up'][k]:9d} {series['n_down'][k]:9d}"
            )
        return "\n".join(lines)

    def write_csv(self, stream: TextIO, cells: list[CellRef] | None = None) -> int:
        """Write the records of ``cells`` (every traced cell if None) in long format.

        One row per cell and record, with the CSV_COLUMNS, ordered by layer, then record,
        then cell. Returns the number of rows written.
        """
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        rows_written = 0
        for traces in self.layers:
            if cells is None:
                positions = np.arange(traces.n_cells)
            else:
                positions = np.array(sorted({cell.position for cell in cells if cell.layer == traces.index}), dtype=np.int64)
            if positions.size == 0:
                continue
            group = self.file[f"traces/layer_{traces.index}"]
            block = max(1, _CSV_BLOCK_VALUES // positions.size)
            for start in range(0, self.n_records, block):
                stop = min(start + block, self.n_records)
                values = {name: group[name][start:stop][:, positions] for name in TRACE_FIELDS}
                n_records = stop - start
                columns = [
                    np.full(n_records * positions.size, traces.index),
                    np.tile(traces.rows[positions], n_records),
                    np.tile(traces.cols[positions], n_records),
                    np.repeat(self.step["sample"][start:stop], positions.size),
                    np.repeat(self.step["epoch"][start:stop], positions.size),
                    *(values[name].ravel() for name in TRACE_FIELDS),
                ]
                writer.writerows(zip(*(column.tolist() for column in columns)))
                rows_written += n_records * positions.size
        return rows_written

    def plot(self, out: str | Path, cells: list[CellRef]) -> None:
        """Draw g against training samples for each cell, one panel each, to an image file.

        Each panel marks the reference and the device's bounds. A bound far outside the range
        of g is named in the panel title instead of drawn, so that the walk stays visible. The
        file format follows the suffix of ``out``. Raises ImportError without matplotlib.
        """
        from matplotlib.figure import Figure

        n_panels = len(cells)
        n_columns = min(3, n_panels)
        n_rows = math.ceil(n_panels / n_columns)
        figure = Figure(figsize=(5.2 * n_columns, 3.5 * n_rows + 0.9), layout="constrained")
        axes = figure.subplots(n_rows, n_columns, squeeze=False)
        samples = self.step["sample"]
        epoch_ends = _epoch_end_samples(self.step)
        for panel, cell in zip(axes.flat, cells):
            series = self.series(cell)
            b_min, b_max = self.bounds(cell)
            for end in epoch_ends:
                panel.axvline(end, color=_EPOCH_LINE_COLOR, linestyle="-.", linewidth=0.9)
            panel.plot(samples, series["g"], color="tab:blue", linewidth=1.2, label="conductance g")
            panel.plot(samples, series["g_ref"], color="tab:green", linestyle="--", linewidth=1.0, label="reference g_ref")
            bounds_note = _draw_bounds(panel, series, b_min, b_max)
            panel.set_title(f"{cell.label(self.layers[cell.layer].n_cols - 1)}\n{bounds_note}", fontsize=9.5)
            panel.set_xlabel("training samples")
            panel.set_ylabel("conductance (weight units)")
            panel.grid(True, color="0.92")
        for panel in list(axes.flat)[n_panels:]:
            panel.set_visible(False)

        handles, labels = axes.flat[0].get_legend_handles_labels()
        handles.append(_legend_line(color="tab:red", linestyle=":", label="bounds b_min, b_max"))
        labels.append("bounds b_min, b_max")
        if epoch_ends:
            handles.append(_legend_line(color=_EPOCH_LINE_COLOR, linestyle="-.", label="epoch end"))
            labels.append("epoch end")
        figure.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False)
        figure.suptitle(
            f"{self.path.name}: {n_panels} traced devices, a record every {self.every} samples "
            f"(status {self.file.attrs.get('status', 'unknown')})",
            fontsize=11,
        )
        figure.savefig(out, dpi=110)


_LISTED_CELLS = 40
_EPOCH_LINE_COLOR = "0.45"
_CSV_BLOCK_VALUES = 1 << 18


def _yes_no(value) -> str:
    if value is None:
        return "unknown (the file was not closed)"
    return "yes" if bool(value) else "no"


def _epoch_end_samples(step: np.ndarray) -> list[int]:
    """Return the sample count at the last record of each finished epoch except the last."""
    ends = []
    for k in range(len(step) - 1):
        if step[k + 1]["epoch"] > step[k]["epoch"] and step[k]["epoch"] > 0:
            ends.append(int(step[k]["sample"]))
    return ends


def _legend_line(**style):
    from matplotlib.lines import Line2D

    return Line2D([], [], **style)


def _draw_bounds(panel, series: dict[str, np.ndarray], b_min: float, b_max: float) -> str:
    """Draw the bounds that lie near the data and set the y range.

    Returns a note of both bounds for the panel title, which marks those outside the view.
    """
    low = float(min(series["g"].min(), series["g_ref"].min()))
    high = float(max(series["g"].max(), series["g_ref"].max()))
    span = max(high - low, 1e-6)
    notes = []
    for bound, name in ((b_min, "b_min"), (b_max, "b_max")):
        if not math.isfinite(bound):
            notes.append(f"{name} {'+' if bound > 0 else '-'}inf")
        elif low - 2 * span <= bound <= high + 2 * span:
            panel.axhline(bound, color="tab:red", linestyle=":", linewidth=1.4)
            low, high = min(low, bound), max(high, bound)
            notes.append(f"{name} {bound:.3f}")
        else:
            notes.append(f"{name} {bound:.3f} ({'above' if bound > high else 'below'} the view)")
    pad = 0.08 * max(high - low, 1e-6)
    panel.set_ylim(low - pad, high + pad)
    return ", ".join(notes)
