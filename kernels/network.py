"""Fused per-sample training: forward, backward and update of every layer in one call.

One call trains on samples order[start:stop] with batch size 1, so Python runs once per
chunk of samples instead of a dozen times per sample. Per-layer arrays come in numba typed
lists, in layer order. The arithmetic is the same as the per-layer kernels: the forward and
backward products of ``mvm``, the pulse rows of ``update``.
"""

import math

import numba
import numpy as np

from .bits import draw_stream
from .jit import INLINE, PRANGE_ONLY
from .mvm import backward, forward
from .rng import STREAM_D_BITS, STREAM_PULSE_NOISE, family_key
from .update import draw_column_bitmaps, exact_update, pulse_row

_ZERO = np.uint64(0)


# Layers with fewer devices update their rows on one thread: for the 784-256-128-10
# network a parallel region per layer and sample cost more than it saved (measured with
# tools/bench.py on 2 cores, Numba 0.68).
PARALLEL_MIN_CELLS = 1 << 20


@numba.njit(**INLINE)
def _update_row(
    i, conductance, reference, weights_t, alpha_up, alpha_down, b_max, b_min, x, d_i,
    scale_d, bit_length, row_family, bitmaps, noise_std, noise_kind, noise_family, cell_up, cell_down,
):
    """Draw row i's stream and apply its pulses; return (up pulses, down pulses)."""
    row_bits = draw_stream(d_i, scale_d, bit_length, row_family, i)
    if row_bits == _ZERO:
        return 0, 0
    return pulse_row(
        i, conductance, reference, weights_t, alpha_up, alpha_down, b_max, b_min, x, 1.0, d_i,
        row_bits, bitmaps, noise_std, noise_kind, noise_family, cell_up, cell_down,
    )


@numba.njit(**PRANGE_ONLY)
def train_samples(
    images,
    labels,
    order,
    start,
    stop,
    weights_t,
    conductance,
    reference,
    alpha_up,
    alpha_down,
    b_max,
    b_min,
    col_bounds,
    row_bounds,
    out_scales,
    stream_seeds,
    pulsed,
    learning_rate,
    bit_length,
    dw_min,
    noise_std,
    noise_kind,
    update_management,
    first_update_index,
    losses,
    correct,
    pulses_up,
    pulses_down,
    cell_up,
    cell_down,
):
    """Train on samples order[start:stop], one SGD step each, in place.

    images: (n_samples, n_inputs) in [0, 1]; labels: (n_samples,) int. The sample at
    position p of ``order`` uses the pulse streams of update index first_update_index + p -
    start. losses, correct: (stop - start,) outputs per sample. pulses_up, pulses_down:
    (n_layers,) int64, incremented by the pulses applied to each layer. cell_up, cell_down:
    typed lists of each layer's (n_rows, n_cols) int64 running totals of pulses per cell.
    """
    n_layers = len(weights_t)
    activations = [np.empty(images.shape[1])]
    errors = []
    for k in range(n_layers):
        n_out = weights_t[k].shape[1]
        activations.append(np.empty(n_out))
        errors.append(np.empty(n_out))
    widest = 0
    tallest = 0
    for k in range(n_layers):
        widest = max(widest, weights_t[k].shape[0])
        tallest = max(tallest, weights_t[k].shape[1])
    back = np.empty(widest)
    row_up = np.zeros(tallest, dtype=np.int64)
    row_down = np.zeros(tallest, dtype=np.int64)

    for position in range(start, stop):
        sample = order[position]
        update_index = first_update_index + position - start
        label = labels[sample]
        x = activations[0]
        for j in range(x.size):
            x[j] = images[sample, j]

        # Forward: sigmoid hidden layers, softmax output.
        for k in range(n_layers):
            out = activations[k + 1]
            forward(weights_t[k], activations[k], 1.0, col_bounds[k], out_scales[k], out)
            if k < n_layers - 1:
                for i in range(out.size):
                    out[i] = 0.5 * (1.0 + math.tanh(0.5 * out[i]))
            else:
                peak = out.max()
                total = 0.0
                for i in range(out.size):
                    out[i] = math.exp(out[i] - peak)
                    total += out[i]
                for i in range(out.size):
                    out[i] /= total
        probabilities = activations[n_layers]
        losses[position - start] = -math.log(max(probabilities[label], 1e-300))
        correct[position - start] = np.argmax(probabilities) == label

        # Backward: the negative gradient at every layer output.
        d = errors[n_layers - 1]
        for i in range(d.size):
            d[i] = -probabilities[i]
        d[label] += 1.0
        for k in range(n_layers - 1, 0, -1):
            backward(weights_t[k], errors[k], row_bounds[k], out_scales[k], back)
            a = activations[k]
            below = errors[k - 1]
            for j in range(below.size):
                below[j] = back[j] * a[j] * (1.0 - a[j])

        # Update: each layer gets (η / s) d [x, 1]^T.
        for k in range(n_layers):
            x_k = activations[k]
            d_k = errors[k]
            rate = learning_rate / out_scales[k]
            if not pulsed:
                exact_update(conductance[k], reference[k], weights_t[k], x_k, 1.0, d_k, rate)
                continue
            gain = math.sqrt(rate / (bit_length * dw_min))
            scale_x = gain
            scale_d = gain
            if update_management:
                x_max = 1.0
                for j in range(x_k.size):
                    x_max = max(x_max, abs(x_k[j]))
                d_max = 0.0
                for i in range(d_k.size):
                    d_max = max(d_max, abs(d_k[i]))
                if d_max == 0.0:
                    continue
                balance = math.sqrt(d_max / x_max)
                scale_x = gain * balance
                scale_d = gain / balance
            g = conductance[k]
            n_rows, n_cols = g.shape
            bitmaps = np.empty((bit_length, (n_cols + 63) // 64), dtype=np.uint64)
            draw_column_bitmaps(x_k, 1.0, scale_x, bit_length, stream_seeds[k], update_index, bitmaps)
            row_family = family_key(stream_seeds[k], update_index, STREAM_D_BITS)
            noise_family = family_key(stream_seeds[k], update_index, STREAM_PULSE_NOISE)
            # Take the arrays out of the typed lists once, not once per row.
            ref = reference[k]
            w_t = weights_t[k]
            a_up = alpha_up[k]
            a_down = alpha_down[k]
            upper = b_max[k]
            lower = b_min[k]
            count_up = cell_up[k]
            count_down = cell_down[k]
            if n_rows * n_cols >= PARALLEL_MIN_CELLS:
                for i in numba.prange(n_rows):
                    row_up[i], row_down[i] = _update_row(
                        i, g, ref, w_t, a_up, a_down, upper, lower, x_k, d_k[i], scale_d, bit_length,
                        row_family, bitmaps, noise_std, noise_kind, noise_family, count_up, count_down,
                    )
            else:
                for i in range(n_rows):
                    row_up[i], row_down[i] = _update_row(
                        i, g, ref, w_t, a_up, a_down, upper, lower, x_k, d_k[i], scale_d, bit_length,
                        row_family, bitmaps, noise_std, noise_kind, noise_family, count_up, count_down,
                    )
            pulses_up[k] += row_up[:n_rows].sum()
            pulses_down[k] += row_down[:n_rows].sum()
