"""crossbar-emu: pulse-level emulation of resistive crossbar arrays training neural networks."""

from .config import Config, ConfigError, load_config
from .network import CrossbarMLP
from .tiles import CrossbarLayer

__all__ = ["Config", "ConfigError", "CrossbarLayer", "CrossbarMLP", "load_config"]
