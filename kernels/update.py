"""Weight-update kernels: the pulsed stochastic update and the exact floating-point one.

The pulsed update follows Gokmen & Vlasov (2016): each input x_j and each error d_i becomes
a stream of BL Bernoulli slots, slot probability min(1, C |value|). Where the bits of row i
and column j are both set in a slot, device (i, j) receives one pulse in the direction
sign(x_j d_i). Its expected weight change is BL * dw_min * C_x * C_d * x_j * d_i.
"""

import numba
import numpy as np

from .bits import draw_stream, popcount
from .device_laws import soft_bounds_down, soft_bounds_up
from .jit import PARALLEL
from .rng import STREAM_D_BITS, STREAM_PULSE_NOISE, STREAM_X_BITS, normal_pair, stream_key


@numba.njit(**PARALLEL)
def pulsed_update(
    conductance,
    reference,
    weights,
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
):
    """Apply one pulsed rank-1 update to soft-bound devices, in place.

    conductance, reference, weights, alpha_up, alpha_down, b_max, b_min: (n_rows, n_cols)
    float arrays; ``weights`` is kept equal to conductance - reference at every touched cell.
    x: (n_cols - 1,) inputs, the last (bias) column driven by ``bias``. d: (n_rows,) errors,
    the negative gradient. scale_x, scale_d: the stream gains C_x, C_d. pulses_up,
    pulses_down: (n_rows,) int64 outputs, the pulses each row received in this update.
    """
    n_rows, n_cols = conductance.shape
    bias_col = n_cols - 1

    # Column streams are shared by every row, so they are drawn once per update.
    x_bits = np.empty(n_cols, dtype=np.uint64)
    for j in numba.prange(n_cols):
        x_j = x[j] if j < bias_col else bias
        x_bits[j] = draw_stream(x_j, scale_x, bit_length, seed, update_index, STREAM_X_BITS, j)
    d_bits = np.empty(n_rows, dtype=np.uint64)
    for i in numba.prange(n_rows):
        d_bits[i] = draw_stream(d[i], scale_d, bit_length, seed, update_index, STREAM_D_BITS, i)

    # Skip silent columns: MNIST pixels and back-propagated errors are mostly zero or tiny.
    n_active = 0
    active_cols = np.empty(n_cols, dtype=np.int64)
    for j in range(n_cols):
        if x_bits[j] != 0:
            active_cols[n_active] = j
            n_active += 1

    for i in numba.prange(n_rows):
        row_bits = d_bits[i]
        n_up = 0
        n_down = 0
        if row_bits != 0:
            # Each row draws its cycle-to-cycle noise from its own counter-based stream.
            key = stream_key(seed, update_index, STREAM_PULSE_NOISE, i)
            counter = 0
            spare = 0.0
            has_spare = False
            row_positive = d[i] > 0.0
            for a in range(n_active):
                j = active_cols[a]
                n_pulses = popcount(row_bits & x_bits[j])
                if n_pulses == 0:
                    continue
                x_j = x[j] if j < bias_col else bias
                up = row_positive == (x_j > 0.0)
                g = conductance[i, j]

                # Pulses land one after another; each sees the state the previous one left.
                for _ in range(n_pulses):
                    noise = 0.0
                    if noise_std > 0.0:
                        if has_spare:
                            noise = noise_std * spare
                            has_spare = False
                        else:
                            first, spare = normal_pair(key, counter)
                            counter += 2
                            noise = noise_std * first
                            has_spare = True
                    if up:
                        g = soft_bounds_up(g, alpha_up[i, j], b_max[i, j], b_min[i, j], noise, noise_kind)
                    else:
                        g = soft_bounds_down(g, alpha_down[i, j], b_max[i, j], b_min[i, j], noise, noise_kind)

                conductance[i, j] = g
                weights[i, j] = g - reference[i, j]
                if up:
                    n_up += n_pulses
                else:
                    n_down += n_pulses
        pulses_up[i] = n_up
        pulses_down[i] = n_down


@numba.njit(**PARALLEL)
def exact_update(conductance, reference, weights, x, bias, d, learning_rate):
    """Apply W <- W + learning_rate * d [x, bias]^T exactly, in place: the floating-point device.

    conductance, reference, weights: (n_rows, n_cols); x: (n_cols - 1,); d: (n_rows,).
    """
    n_rows, n_cols = conductance.shape
    bias_col = n_cols - 1
    for i in numba.prange(n_rows):
        step = learning_rate * d[i]
        if step == 0.0:
            continue
        for j in range(bias_col):
            g = conductance[i, j] + step * x[j]
            conductance[i, j] = g
            weights[i, j] = g - reference[i, j]
        g = conductance[i, bias_col] + step * bias
        conductance[i, bias_col] = g
        weights[i, bias_col] = g - reference[i, bias_col]
