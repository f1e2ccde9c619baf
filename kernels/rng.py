"""Counter-based random numbers, reproducible from the seed whatever the thread count.

Every random number is a pure function of (seed, update index, stream, index, counter). A
key is built by mixing the first four with the SplitMix64 finaliser. Draw ``k`` of that key
is ``mix64(key + (k + 1) * GOLDEN_GAMMA)``, the SplitMix64 sequence started at the key.
No generator state is shared between threads, so a row's noise does not depend on which
thread runs it or in what order.

Gaussian variates come from a 256-layer ziggurat (Marsaglia & Tsang, "The Ziggurat Method
for Generating Random Variables", J. Stat. Softw. 5(8), 2000): one 64-bit draw gives the
layer, the sign and 53 bits of abscissa, and about 99 % of variates need nothing more.
"""

import math

import numba
import numpy as np

from .jit import INLINE

GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_SHIFT_30 = np.uint64(30)
_SHIFT_27 = np.uint64(27)
_SHIFT_31 = np.uint64(31)
_SHIFT_11 = np.uint64(11)
_ONE = np.uint64(1)
_TWO_POW_MINUS_53 = 1.0 / 9007199254740992.0

# Stream identifiers: independent families of random numbers drawn in one update.
STREAM_X_BITS = 1
STREAM_D_BITS = 2
STREAM_PULSE_NOISE = 3
STREAM_CALIBRATION_NOISE = 4


@numba.njit(**INLINE)
def mix64(z):
    """Return the SplitMix64 finaliser of the uint64 ``z``, a bijective avalanche hash."""
    z = (z ^ (z >> _SHIFT_30)) * _MIX_1
    z = (z ^ (z >> _SHIFT_27)) * _MIX_2
    return z ^ (z >> _SHIFT_31)


@numba.njit(**INLINE)
def family_key(seed, update_index, stream):
    """Return the key shared by every stream of one family in one update."""
    key = mix64(np.uint64(seed) + GOLDEN_GAMMA)
    return mix64(key ^ (np.uint64(update_index) * GOLDEN_GAMMA + np.uint64(stream)))


@numba.njit(**INLINE)
def index_key(family, index):
    """Return the key of stream ``index`` of a family: one mix, for per-row or per-column use."""
    return mix64(family + np.uint64(index) * _MIX_2)


@numba.njit(**INLINE)
def stream_key(seed, update_index, stream, index):
    """Return the key of one random stream, from non-negative integer components."""
    return index_key(family_key(seed, update_index, stream), index)


@numba.njit(**INLINE)
def random_bits(key, counter):
    """Return draw number ``counter`` (0, 1, ...) of the stream ``key`` as a uint64."""
    return mix64(key + (np.uint64(counter) + _ONE) * GOLDEN_GAMMA)


_LOW_32 = np.uint64(0xFFFFFFFF)
_SHIFT_32 = np.uint64(32)
_TWO_POW_MINUS_32 = 1.0 / 4294967296.0


@numba.njit(**INLINE)
def uniform_pair32(key, counter):
    """Return two floats in [0, 1) with 32 random bits each, from draw ``counter``.

    The low half gives the first, the high half the second.
    """
    bits = random_bits(key, counter)
    return float(bits & _LOW_32) * _TWO_POW_MINUS_32, float(bits >> _SHIFT_32) * _TWO_POW_MINUS_32


@numba.njit(**INLINE)
def uniform(key, counter):
    """Return draw ``counter`` of stream ``key`` as a float in [0, 1), with 53 random bits."""
    return float(random_bits(key, counter) >> _SHIFT_11) * _TWO_POW_MINUS_53


def _ziggurat_tables(n_layers=256, r=3.6541528853610088, area=0.00492867323399):
    """Return (k, w, f) for a ziggurat of ``n_layers`` layers of equal ``area``.

    Layer 0 is the base strip, [0, r] under f(r) plus the tail beyond r, given the virtual
    width x_0 = area / f(r). Layer i >= 1 spans [0, x_i] between heights f(x_i) and
    f(x_{i+1}), with x_1 = r and x_n = 0. A draw u x_i is accepted at once when below
    x_{i+1}: k[i] = floor(2^53 x_{i+1} / x_i), w[i] = x_i / 2^53, f[i] = exp(-x_i^2 / 2).
    """
    x = np.zeros(n_layers + 1)
    x[0] = area / math.exp(-0.5 * r * r)
    x[1] = r
    for i in range(1, n_layers - 1):
        x[i + 1] = math.sqrt(-2.0 * math.log(math.exp(-0.5 * x[i] ** 2) + area / x[i]))
    scale = 2.0**53
    k = np.array([math.floor(scale * x[i + 1] / x[i]) for i in range(n_layers)], dtype=np.uint64)
    w = x[:n_layers] / scale
    f = np.exp(-0.5 * x**2)
    return k, w, f


ZIGGURAT_R = 3.6541528853610088
_ZIG_K, _ZIG_W, _ZIG_F = _ziggurat_tables(r=ZIGGURAT_R)
_LAYER_MASK = np.uint64(255)
_SHIFT_8 = np.uint64(8)


@numba.njit(**INLINE)
def normal(key, counter):
    """Return (an N(0, 1) variate, the next unused counter) from stream ``key``.

    Ziggurat: draw ``counter`` picks the layer (bits 0-7), the sign (bit 8) and the
    abscissa (bits 11-63). Rejections and the tail take further draws of the same stream.
    """
    while True:
        bits = random_bits(key, counter)
        counter += 1
        layer = int(bits & _LAYER_MASK)
        negative = (bits >> _SHIFT_8) & _ONE
        mantissa = bits >> _SHIFT_11
        x = float(mantissa) * _ZIG_W[layer]
        if mantissa < _ZIG_K[layer]:
            return (-x if negative else x), counter
        if layer == 0:
            # Tail beyond r (Marsaglia 1964): x = -ln(u1) / r, accepted if -2 ln(u2) > x^2.
            while True:
                tail = -math.log(1.0 - uniform(key, counter)) / ZIGGURAT_R
                height = -math.log(1.0 - uniform(key, counter + 1))
                counter += 2
                if height + height > tail * tail:
                    value = ZIGGURAT_R + tail
                    return (-value if negative else value), counter
        # Wedge: accept when a uniform height under the layer falls below the density.
        height = _ZIG_F[layer] + uniform(key, counter) * (_ZIG_F[layer + 1] - _ZIG_F[layer])
        counter += 1
        if height < math.exp(-0.5 * x * x):
            return (-x if negative else x), counter
