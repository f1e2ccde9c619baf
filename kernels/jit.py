"""JIT flags shared by every kernel, kept in one place.

``cache=True`` stores compiled machine code next to the sources, so a second run skips
compilation. ``fastmath`` stays off: the device laws rely on exact IEEE behaviour at the
bounds, and NaN checks must keep working.
"""

SERIAL = {"nogil": True, "cache": True, "fastmath": False}
PARALLEL = {**SERIAL, "parallel": True}
INLINE = {**SERIAL, "inline": "always"}
