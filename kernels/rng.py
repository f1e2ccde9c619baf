"""Counter-based random numbers, reproducible from the seed whatever the thread count.

Every random number is a pure function of (seed, update index, stream, index, counter): a
key is built by mixing the first four with the SplitMix64 finaliser, and draw ``k`` of that
key is ``mix64(key + (k + 1) * GOLDEN_GAMMA)``, the SplitMix64 sequence started at the key.
No generator state is shared between threads, so a row's noise does not depend on which
thread runs it or in what order.
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
def stream_key(seed, update_index, stream, index):
    """Return the key of one random stream, from non-negative integer components."""
    key = mix64(np.uint64(seed) + GOLDEN_GAMMA)
    key = mix64(key ^ (np.uint64(update_index) * GOLDEN_GAMMA + np.uint64(stream)))
    return mix64(key + np.uint64(index) * _MIX_2)


@numba.njit(**INLINE)
def random_bits(key, counter):
    """Return draw number ``counter`` (0, 1, ...) of the stream ``key`` as a uint64."""
    return mix64(key + (np.uint64(counter) + _ONE) * GOLDEN_GAMMA)


@numba.njit(**INLINE)
def uniform(key, counter):
    """Return draw ``counter`` of stream ``key`` as a float in [0, 1), with 53 random bits."""
    return float(random_bits(key, counter) >> _SHIFT_11) * _TWO_POW_MINUS_53


@numba.njit(**INLINE)
def normal_pair(key, counter):
    """Return two independent N(0, 1) variates from draws ``counter`` and ``counter + 1``.

    Box-Muller transform; the first uniform is taken in (0, 1] so that its log is finite.
    """
    u1 = (float(random_bits(key, counter) >> _SHIFT_11) + 1.0) * _TWO_POW_MINUS_53
    u2 = float(random_bits(key, counter + 1) >> _SHIFT_11) * _TWO_POW_MINUS_53
    radius = math.sqrt(-2.0 * math.log(u1))
    angle = 2.0 * math.pi * u2
    return radius * math.cos(angle), radius * math.sin(angle)
