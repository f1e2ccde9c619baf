"""JIT flags shared by every kernel, kept in one place.

``cache=True`` stores compiled machine code next to the sources, so a second run skips
compilation. ``fastmath`` stays off: the device laws rely on exact IEEE behaviour at the
bounds, and NaN checks must keep working. The one exception is ``DOT``, for dot products:
it allows reassociation only, so the compiler can sum in SIMD lanes. The order then
depends on the compiled code, not on the thread count, and NaN and Inf propagate as usual.
"""

SERIAL = {"nogil": True, "cache": True, "fastmath": False}
PARALLEL = {**SERIAL, "parallel": True}
INLINE = {**SERIAL, "inline": "always"}
DOT = {**SERIAL, "fastmath": {"reassoc"}}
# Parallel over explicit prange loops only. Numba would otherwise turn array expressions
# such as ``a.max()`` or ``np.zeros(n)`` into parallel regions too, and in the per-sample
# loop their start-up cost made two threads slower than one.
PRANGE_ONLY = {
    **SERIAL,
    "parallel": {
        "prange": True,
        "numpy": False,
        "reduction": False,
        "setitem": False,
        "comprehension": False,
        "inplace_binop": False,
        "stencil": False,
        "fusion": False,
    },
}
