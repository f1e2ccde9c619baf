"""Weight-update kernels: the pulsed stochastic update and the exact floating-point one.

The pulsed update follows Gokmen & Vlasov (2016): each input x_j and each error d_i becomes
a stream of BL Bernoulli slots, slot probability min(1, C |value|). Where the bits of row i
and column j are both set in a slot, device (i, j) receives one pulse in the direction
sign(x_j d_i). Its expected weight change is BL * dw_min * C_x * C_d * x_j * d_i.

Pulses are applied slot by slot, in time order as the hardware fires them: for row i, the
slots where its own bit is set, and within a slot the coincident columns in increasing
order. Each pulse starts from the conductance the previous one left. Enumerating the set bits of
per-slot column bitmaps makes the cost proportional to the pulses, not to the cells.

Arrays: conductance, reference and the device parameters are (n_rows, n_cols), one row per
layer output, the bias column last. The weight cache ``weights_t`` is stored transposed,
(n_cols, n_rows), for the matrix-vector products, and equals g - g_ref at every cell.
"""

import numba
import numpy as np

from .bits import draw_stream, lowest_set_bit, slot_bitmaps
from .device_laws import soft_bounds_down, soft_bounds_up
from .jit import PARALLEL, SERIAL
from .rng import STREAM_D_BITS, STREAM_PULSE_NOISE, STREAM_X_BITS, family_key, index_key, normal

_ZERO = np.uint64(0)
_ONE = np.uint64(1)


@numba.njit(**SERIAL)
def draw_column_bitmaps(x, bias, scale_x, bit_length, seed, update_index, bitmaps):
    """Draw the column streams of one update into per-slot bitmaps; return the bits set.

    x: (n_cols - 1,) inputs, the last (bias) column driven by ``bias``. bitmaps:
    (bit_length, ceil(n_cols / 64)) uint64 output.
    """
    n_cols = x.size + 1
    family = family_key(seed, update_index, STREAM_X_BITS)
    column_bits = np.empty(n_cols, dtype=np.uint64)
    for j in range(n_cols):
        x_j = x[j] if j < n_cols - 1 else bias
        column_bits[j] = draw_stream(x_j, scale_x, bit_length, family, j)
    slot_bitmaps(column_bits, bit_length, bitmaps)


@numba.njit(**SERIAL)
def pulse_row(
    i, conductance, reference, weights_t, alpha_up, alpha_down, b_max, b_min, x, bias, d_i,
    row_bits, bitmaps, noise_std, noise_kind, noise_family, cell_up, cell_down,
):
    """Apply the pulses of row i for one update; return (up pulses, down pulses).

    row_bits: the row's stream; bitmaps: the per-slot column bitmaps of the update;
    noise_family: the update's key of the pulse-noise streams, one stream per row.
    cell_up, cell_down: (n_rows, n_cols) int64 running totals of each cell's pulses.
    """
    bias_col = conductance.shape[1] - 1
    key = index_key(noise_family, i)
    counter = 0
    row_positive = d_i > 0.0
    n_up = 0
    n_down = 0
    for slot in range(bitmaps.shape[0]):
        if (row_bits >> np.uint64(slot)) & _ONE == _ZERO:
            continue
        for w in range(bitmaps.shape[1]):
            word = bitmaps[slot, w]
            while word != _ZERO:
                j = (w << 6) + lowest_set_bit(word)
                word &= word - _ONE
                x_j = x[j] if j < bias_col else bias
                up = row_positive == (x_j > 0.0)

                # Cycle-to-cycle noise from the row's own counter-based stream.
                noise = 0.0
                if noise_std > 0.0:
                    xi, counter = normal(key, counter)
                    noise = noise_std * xi

                g = conductance[i, j]
                if up:
                    g = soft_bounds_up(g, alpha_up[i, j], b_max[i, j], b_min[i, j], noise, noise_kind)
                    n_up += 1
                    cell_up[i, j] += 1
                else:
                    g = soft_bounds_down(g, alpha_down[i, j], b_max[i, j], b_min[i, j], noise, noise_kind)
                    n_down += 1
                    cell_down[i, j] += 1
                conductance[i, j] = g
                weights_t[j, i] = g - reference[i, j]
    return n_up, n_down


@numba.njit(**PARALLEL)
def pulsed_update(
    conductance,
    reference,
    weights_t,
    alpha_up,
    alpha_down,
    b_max,
    b_min,
    x,
    bias,
    d,
    scale_x,
    scale_d,
    bit_length,
    noise_std,
    noise_kind,
    seed,
    update_index,
    pulses_up,
    pulses_down,
    cell_up,
    cell_down,
):
    """Apply one pulsed rank-1 update to soft-bound devices, in place, parallel over rows.

    x: (n_cols - 1,) inputs, the last (bias) column driven by ``bias``. d: (n_rows,) errors,
    the negative gradient. scale_x, scale_d: the stream gains C_x, C_d. pulses_up,
    pulses_down: (n_rows,) int64 outputs, the pulses each row received in this update.
    cell_up, cell_down: (n_rows, n_cols) int64 running totals, incremented per pulse.
    """
    n_rows, n_cols = conductance.shape
    bitmaps = np.empty((bit_length, (n_cols + 63) // 64), dtype=np.uint64)
    draw_column_bitmaps(x, bias, scale_x, bit_length, seed, update_index, bitmaps)
    row_family = family_key(seed, update_index, STREAM_D_BITS)
    noise_family = family_key(seed, update_index, STREAM_PULSE_NOISE)
    for i in numba.prange(n_rows):
        row_bits = draw_stream(d[i], scale_d, bit_length, row_family, i)
        pulses_up[i] = 0
        pulses_down[i] = 0
        if row_bits != _ZERO:
            pulses_up[i], pulses_down[i] = pulse_row(
                i, conductance, reference, weights_t, alpha_up, alpha_down, b_max, b_min, x, bias, d[i],
                row_bits, bitmaps, noise_std, noise_kind, noise_family, cell_up, cell_down,
            )


@numba.njit(**SERIAL)
def exact_update(conductance, reference, weights_t, x, bias, d, learning_rate):
    """Apply W <- W + learning_rate * d [x, bias]^T exactly, in place: the floating-point device.

    conductance, reference: (n_rows, n_cols); weights_t: (n_cols, n_rows); x: (n_cols - 1,);
    d: (n_rows,). Columns with a zero input are skipped; MNIST inputs are mostly zero.
    """
    n_rows, n_cols = conductance.shape
    for j in range(n_cols):
        x_j = x[j] if j < n_cols - 1 else bias
        if x_j == 0.0:
            continue
        step = learning_rate * x_j
        for i in range(n_rows):
            g = conductance[i, j] + step * d[i]
            conductance[i, j] = g
            weights_t[j, i] = g - reference[i, j]
