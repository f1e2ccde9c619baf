"""Ideal matrix-vector products of a layer split over tiles.

Each tile computes its partial sums; the periphery adds the partial outputs of the tiles
digitally and multiplies by the layer's output scale s. Tile boundaries are index arrays:
tile t covers columns col_bounds[t]:col_bounds[t + 1] (rows: row_bounds). The weights are
the transposed cache ``weights_t``, (n_cols, n_rows), bias column last, so the forward pass
adds one contiguous row per non-zero input and the backward pass takes contiguous dot
products.
"""

import numba
import numpy as np

from .jit import DOT, PARALLEL, SERIAL


@numba.njit(**SERIAL)
def forward(weights_t, x, bias, col_bounds, out_scale, out):
    """Compute out = s W [x, bias], summing per-tile partial outputs; x has n_cols - 1 entries.

    Zero inputs are skipped, which changes nothing in the sum.
    """
    n_cols, n_out = weights_t.shape
    bias_col = n_cols - 1
    partial = np.empty(n_out)
    out[:] = 0.0
    for t in range(col_bounds.size - 1):
        stop = col_bounds[t + 1]
        partial[:] = 0.0
        for j in range(col_bounds[t], min(stop, bias_col)):
            x_j = x[j]
            if x_j == 0.0:
                continue
            for i in range(n_out):
                partial[i] += x_j * weights_t[j, i]
        if stop > bias_col:
            for i in range(n_out):
                partial[i] += bias * weights_t[bias_col, i]
        for i in range(n_out):
            out[i] += partial[i]
    for i in range(n_out):
        out[i] *= out_scale


@numba.njit(**PARALLEL)
def forward_batch(weights_t, inputs, bias, col_bounds, out_scale, out):
    """Compute out[n] = s W [inputs[n], bias] for every sample n, parallel over samples."""
    for n in numba.prange(inputs.shape[0]):
        forward(weights_t, inputs[n], bias, col_bounds, out_scale, out[n])


@numba.njit(**DOT)
def backward(weights_t, d, row_bounds, out_scale, out):
    """Compute out = s W^T d, summing per-tile partial outputs; out has n_cols entries.

    Compiled with reassociation allowed, so each tile's dot product is summed in SIMD lanes.
    The loops run over slices from index 0: a loop starting at a run-time offset was not
    vectorised by Numba 0.68 and took about seven times as long.
    """
    n_cols = weights_t.shape[0]
    for j in range(n_cols):
        total = 0.0
        for t in range(row_bounds.size - 1):
            weights = weights_t[j, row_bounds[t] : row_bounds[t + 1]]
            errors = d[row_bounds[t] : row_bounds[t + 1]]
            partial = 0.0
            for i in range(weights.size):
                partial += weights[i] * errors[i]
            total += partial
        out[j] = out_scale * total
