"""Numba kernels of crossbar-emu: arrays and scalars in, arrays out.

Nothing in this subpackage validates input, logs or raises. The wrappers in
``crossbar_emu`` check arguments and call these functions with keyword arguments.
"""
