"""Bit-stream helpers for the stochastic pulse coincidence scheme."""

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from .jit import INLINE
from .rng import index_key, uniform_pair32

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_S1 = np.uint64(1)
_S2 = np.uint64(2)
_S4 = np.uint64(4)
_S56 = np.uint64(56)
_ZERO = np.uint64(0)
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_WORD_MASK = 63

MAX_BIT_LENGTH = 64


@numba.njit(**INLINE)
def popcount(word):
    """Return the number of set bits of a uint64 (SWAR population count)."""
    word = word - ((word >> _S1) & _M1)
    word = (word & _M2) + ((word >> _S2) & _M2)
    word = (word + (word >> _S4)) & _M4
    return int((word * _H01) >> _S56)


@numba.njit(**INLINE)
def lowest_set_bit(word):
    """Return the index of the lowest set bit of a non-zero uint64."""
    return int(trailing_zeros(word))


@numba.njit(**INLINE)
def draw_stream(value, scale, bit_length, family, index):
    """Return a BL-slot Bernoulli stream packed in a uint64, slot k in bit k.

    Each slot is 1 with probability min(1, scale * |value|), decided by a 32-bit uniform:
    slots 2m and 2m + 1 take the low and high halves of draw m of the stream keyed by
    (family, index). A probability of 1 sets every slot without drawing.
    """
    probability = min(1.0, scale * abs(value))
    if probability <= 0.0:
        return _ZERO
    if probability >= 1.0:
        return _ALL_ONES >> np.uint64(64 - bit_length)
    key = index_key(family, index)
    word = _ZERO
    for pair in range((bit_length + 1) // 2):
        first, second = uniform_pair32(key, pair)
        slot = 2 * pair
        if first < probability:
            word |= _S1 << np.uint64(slot)
        if slot + 1 < bit_length and second < probability:
            word |= _S1 << np.uint64(slot + 1)
    return word


@numba.njit(**INLINE)
def slot_bitmaps(column_bits, bit_length, bitmaps):
    """Transpose per-column streams into per-slot bitmaps over the columns.

    column_bits: (n_cols,) uint64, slot k of column j in bit k. bitmaps: (bit_length,
    ceil(n_cols / 64)) uint64 output; bit j % 64 of word j // 64 of row k is column j's
    slot k. Cost is proportional to the number of set bits.
    """
    bitmaps[:, :] = _ZERO
    for j in range(column_bits.size):
        word = column_bits[j]
        while word != _ZERO:
            slot = lowest_set_bit(word)
            word &= word - _S1
            bitmaps[slot, j >> 6] |= _S1 << np.uint64(j & _WORD_MASK)
