"""Ideal matrix-vector products of a layer split over tiles.

Each tile computes its partial sums; the periphery adds the partial outputs of the tiles in
a row of tiles digitally and multiplies by the layer's output scale s. Tile boundaries are
given as index arrays: tile t covers columns col_bounds[t]:col_bounds[t + 1].
"""

import numba
import numpy as np

from .jit import PARALLEL, SERIAL

_BACKWARD_BLOCK = 64


@numba.njit(**SERIAL)
def _forward_row(weights, x, bias, i, col_bounds):
    """Return sum over tiles of the partial products of row i with x (bias after x)."""
    bias_col = weights.shape[1] - 1
    total = 0.0
    for t in range(col_bounds.size - 1):
        stop = col_bounds[t + 1]
        partial = 0.0
        for j in range(col_bounds[t], min(stop, bias_col)):
            partial += weights[i, j] * x[j]
        if stop > bias_col:
            partial += weights[i, bias_col] * bias
        total += partial
    return total


@numba.njit(**PARALLEL)
def forward(weights, x, bias, col_bounds, out_scale, out):
    """Compute out = s * W [x, bias] over column tiles; x has n_cols - 1 entries."""
    for i in numba.prange(weights.shape[0]):
        out[i] = out_scale * _forward_row(weights, x, bias, i, col_bounds)


@numba.njit(**PARALLEL)
def forward_batch(weights, inputs, bias, col_bounds, out_scale, out):
    """Compute out[n] = s * W [inputs[n], bias] for every sample n, parallel over samples."""
    for n in numba.prange(inputs.shape[0]):
        x = inputs[n]
        for i in range(weights.shape[0]):
            out[n, i] = out_scale * _forward_row(weights, x, bias, i, col_bounds)


@numba.njit(**PARALLEL)
def backward(weights, d, row_bounds, out_scale, out):
    """Compute out = s * W^T d over row tiles; out has n_cols entries, the bias column last.

    Parallel over blocks of columns, so each thread streams whole rows of its block and the
    summation order does not depend on the thread count.
    """
    n_cols = weights.shape[1]
    n_blocks = (n_cols + _BACKWARD_BLOCK - 1) // _BACKWARD_BLOCK
    for block in numba.prange(n_blocks):
        start = block * _BACKWARD_BLOCK
        stop = min(start + _BACKWARD_BLOCK, n_cols)
        total = np.zeros(stop - start)
        partial = np.empty(stop - start)
        for t in range(row_bounds.size - 1):
            partial[:] = 0.0
            for i in range(row_bounds[t], row_bounds[t + 1]):
                di = d[i]
                if di == 0.0:
                    continue
                for j in range(start, stop):
                    partial[j - start] += weights[i, j] * di
            total += partial
        for j in range(start, stop):
            out[j] = out_scale * total[j - start]
