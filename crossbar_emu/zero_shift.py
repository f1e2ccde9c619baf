"""Zero-shifting: measure each device's symmetry point and program the references to it.

The weight of a cross-point is read differentially, w = g − g_ref. Programming g_ref to
the device's symmetry point w* makes w = 0 exactly where up and down pulses balance, so the
drift toward w* under random updates becomes a drift toward zero weight. Programming is
imperfect: g_ref = target + σ_ref ξ.

With a reference per cell each device gets its own target. A shared reference column has
one device per row of each tile, subtracted from every column's output, so it is programmed
to the mean target of that row within the tile.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .config import ZeroShiftConfig
from .devices import symmetry_point
from .kernels import calibration
from .tiles import CrossbarLayer

logger = logging.getLogger(__name__)

CALIBRATION_DTYPE = np.dtype(
    [
        ("tile_row", np.int32),
        ("tile_col", np.int32),
        ("pulses", np.int64),
        ("mean_abs_error", np.float64),
        ("std_abs_error", np.float64),
        ("max_abs_error", np.float64),
        ("mean_error", np.float64),
    ]
)


@dataclass
class Calibration:
    """Outcome of zero-shifting one layer."""

    mode: str
    closed_form: np.ndarray | None
    """w* from the closed form, per device; None for the floating-point device."""
    measured: np.ndarray | None = None
    """w* read out by the pulsed measurement, per device (pulsed mode only)."""
    pulses: int = 0
    """Pulses spent on the measurement, all devices together."""
    tiles: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=CALIBRATION_DTYPE))
    """Per tile: pulses spent and the statistics of measured − closed form, weight units."""


def measure_symmetry_points(
    layer: CrossbarLayer, n_pairs: int, n_average: int, seed: int, round_index: int = 0
) -> np.ndarray:
    """Drive every device of ``layer`` with ``n_pairs`` up/down pairs and return the read-out.

    The devices start from their present conductance and end near w*; the conductance
    they reach stays in ``layer.conductance`` (the caller reprograms the weights after).
    The read-out is the mean conductance after each pulse of the last ``n_average`` pairs.
    """
    readout = np.empty(layer.shape)
    calibration.alternating_pairs(
        conductance=layer.conductance,
        alpha_up=layer.params.alpha_up,
        alpha_down=layer.params.alpha_down,
        b_max=layer.params.b_max,
        b_min=layer.params.b_min,
        n_pairs=n_pairs,
        n_average=n_average,
        noise_std=layer.device.noise_std,
        noise_kind=layer.noise_kind,
        seed=seed,
        round_index=round_index,
        readout=readout,
    )
    np.subtract(layer.conductance, layer.reference, out=layer.weights)
    return readout


def tile_statistics(layer: CrossbarLayer, measured: np.ndarray, closed_form: np.ndarray, pulses_per_device: int) -> np.ndarray:
    """Return one CALIBRATION_DTYPE row per tile of ``layer``."""
    rows = []
    for r in range(layer.n_tiles[0]):
        for c in range(layer.n_tiles[1]):
            block = (
                slice(layer.row_bounds[r], layer.row_bounds[r + 1]),
                slice(layer.col_bounds[c], layer.col_bounds[c + 1]),
            )
            error = measured[block] - closed_form[block]
            magnitude = np.abs(error)
            rows.append(
                (r, c, pulses_per_device * error.size, magnitude.mean(), magnitude.std(), magnitude.max(), error.mean())
            )
    return np.array(rows, dtype=CALIBRATION_DTYPE)


def reference_targets(layer: CrossbarLayer, points: np.ndarray) -> np.ndarray:
    """Return the values to program into the reference devices for per-device points w*.

    Cell layout: w* itself. Column layout: the mean w* of each row within each tile.
    """
    if layer.tile.reference == "cell":
        return points.copy()
    targets = np.empty(layer.reference_values.shape)
    for c in range(layer.n_tiles[1]):
        targets[:, c] = points[:, layer.col_bounds[c] : layer.col_bounds[c + 1]].mean(axis=1)
    return targets


def zero_shift_layer(layer: CrossbarLayer, config: ZeroShiftConfig, seed: int, rng: np.random.Generator) -> Calibration:
    """Program the references of ``layer`` as ``config`` sets them, and return the record.

    ``seed`` keys the calibration pulse noise; ``rng`` draws the programming errors. The
    weights must be programmed after this call, around the new reference.
    """
    closed_form = symmetry_point(layer.params) if layer.is_pulsed else None
    result = Calibration(mode=config.mode, closed_form=closed_form)
    if config.mode == "off":
        targets = np.full(layer.reference_values.shape, float(layer.tile.reference_value))
    elif config.mode == "exact":
        targets = reference_targets(layer, closed_form)
    else:
        result.measured = measure_symmetry_points(layer, config.pairs, config.average, seed)
        result.pulses = 2 * config.pairs * closed_form.size
        result.tiles = tile_statistics(layer, result.measured, closed_form, 2 * config.pairs)
        targets = reference_targets(layer, result.measured)
        logger.info(
            "layer %d: calibrated %d devices with %d pulse pairs each; |measured - closed form| "
            "mean %.2e, max %.2e",
            layer.index,
            closed_form.size,
            config.pairs,
            float(np.mean(np.abs(result.measured - closed_form))),
            float(np.max(np.abs(result.measured - closed_form))),
        )

    if config.reference_error > 0.0:
        targets = targets + config.reference_error * rng.standard_normal(targets.shape)
    layer.program_reference(targets)
    return result


CONVERGENCE_DTYPE = np.dtype(
    [
        ("pairs", np.int64),
        ("average", np.int64),
        ("pulses_per_device", np.int64),
        ("mean_abs_error", np.float64),
        ("std_abs_error", np.float64),
        ("max_abs_error", np.float64),
        ("mean_error", np.float64),
        ("seconds", np.float64),
    ]
)

START_STATES = ("zero", "b_max", "b_min", "uniform")


def set_start_state(layer: CrossbarLayer, start: str, rng: np.random.Generator) -> None:
    """Set every device's conductance to 0, its upper or lower bound, or uniform in between."""
    params = layer.params
    if start == "zero":
        layer.conductance[...] = np.clip(0.0, params.b_min, params.b_max)
    elif start == "b_max":
        layer.conductance[...] = params.b_max
    elif start == "b_min":
        layer.conductance[...] = params.b_min
    elif start == "uniform":
        layer.conductance[...] = rng.uniform(params.b_min, params.b_max)
    else:
        raise ValueError(f"invalid start state {start!r}; valid states: {', '.join(START_STATES)}")


def convergence_table(
    layer: CrossbarLayer, pair_counts: list[int], average: int, start: str, seed: int
) -> np.ndarray:
    """Measure w* of every device of ``layer`` with each number of pairs, from ``start``.

    Each row is a fresh measurement from the start state with N pairs and a read-out over
    the last min(average, N) pairs, as a training run with those settings would do it.
    """
    closed_form = symmetry_point(layer.params)
    rows = []
    for round_index, n_pairs in enumerate(pair_counts):
        set_start_state(layer, start, np.random.default_rng(seed))
        n_average = min(average, n_pairs)
        begin = time.perf_counter()
        measured = measure_symmetry_points(layer, n_pairs, n_average, seed, round_index)
        seconds = time.perf_counter() - begin
        error = measured - closed_form
        magnitude = np.abs(error)
        rows.append(
            (n_pairs, n_average, 2 * n_pairs, magnitude.mean(), magnitude.std(), magnitude.max(), error.mean(), seconds)
        )
    return np.array(rows, dtype=CONVERGENCE_DTYPE)
