"""Scalar device laws: the conductance after one pulse, inlined into the loop kernels.

Conductances are in weight units. ``noise`` is the cycle-to-cycle term ``sigma * xi`` with
xi ~ N(0, 1) already drawn; ``additive_noise`` selects where it enters the step. Adding a
device model means adding one pair of such functions and its configuration.
"""

import numba

from .jit import INLINE

NOISE_MULTIPLICATIVE = 0
NOISE_ADDITIVE = 1


@numba.njit(**INLINE)
def soft_bounds_up(g, alpha_up, b_max, b_min, noise, noise_kind):
    """Return g after one up pulse of a soft-bound device, clipped to [b_min, b_max].

    multiplicative: g + alpha_up (1 - g / b_max) (1 + noise)
    additive:       g + alpha_up (1 - g / b_max + noise)
    """
    if noise_kind == NOISE_ADDITIVE:
        g = g + alpha_up * (1.0 - g / b_max + noise)
    else:
        g = g + alpha_up * (1.0 - g / b_max) * (1.0 + noise)
    return min(max(g, b_min), b_max)


@numba.njit(**INLINE)
def soft_bounds_down(g, alpha_down, b_max, b_min, noise, noise_kind):
    """Return g after one down pulse of a soft-bound device, clipped to [b_min, b_max].

    multiplicative: g - alpha_down (1 - g / b_min) (1 + noise)
    additive:       g - alpha_down (1 - g / b_min + noise)
    """
    if noise_kind == NOISE_ADDITIVE:
        g = g - alpha_down * (1.0 - g / b_min + noise)
    else:
        g = g - alpha_down * (1.0 - g / b_min) * (1.0 + noise)
    return min(max(g, b_min), b_max)
