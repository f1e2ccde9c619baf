"""Run configuration: nested dataclasses, validated at construction, read from TOML.

Every field has a docstring line: symbol, unit, meaning and the source of its default.
Conductances and weights are in weight units (the unit of the network's weights), so a
device bound of 0.6 is a conductance of 0.6 weight units above the device's zero.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEVICE_KINDS = ("softbounds", "float")
NOISE_KINDS = ("multiplicative", "additive")
REFERENCE_LAYOUTS = ("cell", "column")
ZERO_SHIFT_MODES = ("off", "exact", "pulsed")
DEFAULT_CALIBRATION_PAIRS = 3000
DEFAULT_CALIBRATION_AVERAGE = 500
INIT_FAN_IN = "fan_in"


class ConfigError(ValueError):
    """An invalid configuration value; ``key`` is its dotted name, such as ``device.bound``."""

    def __init__(self, key: str, value: Any, rule: str):
        self.key = key
        self.value = value
        self.rule = rule
        super().__init__(f"invalid {key} = {value!r}: {rule}")


def _check_range(key, value, low=None, high=None, low_open=False, high_open=False, kind=float):
    """Raise ConfigError unless ``value`` is a finite number of ``kind`` in the interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise ConfigError(key, value, f"must be {'a number' if kind is float else 'an integer'}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(key, value, "must be finite")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        raise ConfigError(key, value, f"must be in {left}{_bound_text(low, '-inf')}, {_bound_text(high, 'inf')}{right}")


def _bound_text(bound, unbounded):
    if bound is None:
        return unbounded
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _check_choice(key, value, choices):
    if value not in choices:
        raise ConfigError(key, value, f"must be one of {', '.join(choices)}")


@dataclass(frozen=True)
class DeviceConfig:
    """Soft-bound device model and its device-to-device and cycle-to-cycle variation.

    Defaults are Gokmen & Vlasov (2016) as carried into aihwkit's SoftBounds device.
    """

    kind: str = "softbounds"
    """Device model: ``softbounds`` (pulsed, bounded) or ``float`` (exact update, no bounds)."""
    dw_min: float = 0.001
    """Δw_min, weight units: nominal step of one pulse at g = 0."""
    bound: float = 0.6
    """β, weight units: nominal soft bound; b_max = β (1 + σ_b ξ₁), b_min = −β (1 + σ_b ξ₂)."""
    dw_min_dtod: float = 0.3
    """σ_d2d, relative: device-to-device spread of the step gain."""
    bound_dtod: float = 0.3
    """σ_b, relative: device-to-device spread of each bound."""
    up_down_dtod: float = 0.01
    """σ_ud, relative: device-to-device spread of the up/down difference r."""
    imbalance: float = 0.0
    """u, relative: global up/down imbalance; the weaker direction steps Δw_min (1 − |u|).
    u > 0 weakens down pulses, u < 0 weakens up pulses (aihwkit's code convention)."""
    noise: str = "multiplicative"
    """Cycle-to-cycle noise form: ``multiplicative`` α (1 − g/b)(1 + σ ξ) or
    ``additive`` α (1 − g/b + σ ξ) (aihwkit's SoftBoundsReference form)."""
    noise_std: float = 0.3
    """σ_c2c, relative: cycle-to-cycle noise of each pulse."""

    def __post_init__(self):
        _check_choice("device.kind", self.kind, DEVICE_KINDS)
        _check_range("device.dw_min", self.dw_min, 0.0, None, low_open=True)
        _check_range("device.bound", self.bound, 0.0, None, low_open=True)
        _check_range("device.dw_min_dtod", self.dw_min_dtod, 0.0, None)
        _check_range("device.bound_dtod", self.bound_dtod, 0.0, None)
        _check_range("device.up_down_dtod", self.up_down_dtod, 0.0, None)
        _check_range("device.imbalance", self.imbalance, -1.0, 1.0, True, True)
        _check_choice("device.noise", self.noise, NOISE_KINDS)
        _check_range("device.noise_std", self.noise_std, 0.0, None)
        if self.kind == "softbounds" and self.dw_min >= self.bound:
            raise ConfigError(
                "device.dw_min",
                self.dw_min,
                f"must be smaller than device.bound = {self.bound:g}, or a pulse jumps "
                "from bound to bound",
            )


@dataclass(frozen=True)
class TileConfig:
    """Crossbar tiles and their periphery."""

    max_rows: int = 512
    """Largest tile height in devices; a layer with more outputs spans several tiles."""
    max_cols: int = 512
    """Largest tile width in devices, the bias column included."""
    reference: str = "cell"
    """Reference layout: ``cell`` (one reference device per cross-point) or ``column``
    (one reference device per row of each tile, subtracted from every column's output)."""
    reference_value: float = 0.0
    """g_ref, weight units: constant conductance programmed into every reference device."""

    def __post_init__(self):
        _check_range("tile.max_rows", self.max_rows, 1, None, kind=int)
        _check_range("tile.max_cols", self.max_cols, 2, None, kind=int)
        _check_choice("tile.reference", self.reference, REFERENCE_LAYOUTS)
        _check_range("tile.reference_value", self.reference_value)


@dataclass(frozen=True)
class ZeroShiftConfig:
    """Zero-shifting: program each reference to its device's symmetry point w*.

    Kim et al., "Zero-shifting Technique for Deep Neural Network Training on Resistive
    Cross-point Arrays", arXiv:1907.10228 (2019).
    """

    mode: str = "off"
    """``off``: the references keep tile.reference_value. ``exact``: the closed-form w*.
    ``pulsed``: w* measured with alternating up/down pulse pairs on each device."""
    calibration_pairs: int | None = None
    """N: up/down pulse pairs per device in the pulsed measurement (3000 if unset)."""
    calibration_average: int | None = None
    """K: the read-out averages the conductance over the last K pairs (min(500, N) if unset)."""
    reference_error: float = 0.0
    """σ_ref, weight units: programming error of each reference device, g_ref = target + σ_ref ξ."""

    def __post_init__(self):
        _check_choice("zero_shift.mode", self.mode, ZERO_SHIFT_MODES)
        _check_range("zero_shift.reference_error", self.reference_error, 0.0, None)
        for key in ("calibration_pairs", "calibration_average"):
            value = getattr(self, key)
            if value is None:
                continue
            if self.mode != "pulsed":
                raise ConfigError(
                    f"zero_shift.{key}", value, f"applies only to zero_shift.mode = \"pulsed\", not \"{self.mode}\"; unset it or use the pulsed mode"
                )
            _check_range(f"zero_shift.{key}", value, 1, None, kind=int)
        if self.mode == "pulsed" and self.average > self.pairs:
            raise ConfigError(
                "zero_shift.calibration_average",
                self.average,
                f"must not exceed zero_shift.calibration_pairs = {self.pairs}",
            )

    @property
    def pairs(self) -> int:
        """N in effect."""
        return DEFAULT_CALIBRATION_PAIRS if self.calibration_pairs is None else self.calibration_pairs

    @property
    def average(self) -> int:
        """K in effect."""
        if self.calibration_average is not None:
            return self.calibration_average
        return min(DEFAULT_CALIBRATION_AVERAGE, self.pairs)


@dataclass(frozen=True)
class UpdateConfig:
    """Stochastic pulsed update (Gokmen & Vlasov 2016)."""

    bit_length: int = 10
    """BL: slots per stream; η = BL Δw_min C² sets the stream gain C."""
    update_management: bool = False
    """Scale the x and δ streams by √(max|δ| / max|x|) and its inverse so both use the
    probability range (aihwkit's update management); off in the reference experiment."""

    def __post_init__(self):
        _check_range("update.bit_length", self.bit_length, 1, 64, kind=int)
        if not isinstance(self.update_management, bool):
            raise ConfigError("update.update_management", self.update_management, "must be true or false")


@dataclass(frozen=True)
class NetworkConfig:
    """The multilayer perceptron: sigmoid hidden layers, softmax output."""

    hidden: tuple[int, ...] = (256, 128)
    """Hidden layer widths; 784-256-128-10 is Gokmen & Vlasov's network."""
    init_bound: str | float = INIT_FAN_IN
    """Initial weights are uniform in ±init_bound; ``fan_in`` means 1/√n_in per layer."""
    output_scale: tuple[float, ...] = (1.0,)
    """s, per layer: digital gain applied to each tile's output. One value applies to every
    layer. The effective weight is s (g − g_ref)."""

    def __post_init__(self):
        if isinstance(self.hidden, (str, bytes)) or not hasattr(self.hidden, "__iter__"):
            if isinstance(self.hidden, int) and not isinstance(self.hidden, bool):
                object.__setattr__(self, "hidden", (self.hidden,))
            else:
                raise ConfigError("network.hidden", self.hidden, "must be a list of layer widths, such as [256, 128]")
        hidden = tuple(self.hidden)
        object.__setattr__(self, "hidden", hidden)
        for width in hidden:
            _check_range("network.hidden", width, 1, None, kind=int)
        if self.init_bound != INIT_FAN_IN:
            _check_range("network.init_bound", self.init_bound, 0.0, None)
        scales = self.output_scale
        if isinstance(scales, (int, float)) and not isinstance(scales, bool):
            scales = (scales,)
        scales = tuple(scales)
        object.__setattr__(self, "output_scale", scales)
        if len(scales) not in (1, len(hidden) + 1):
            raise ConfigError(
                "network.output_scale",
                list(scales),
                f"must hold 1 value or one per layer ({len(hidden) + 1})",
            )
        for scale in scales:
            _check_range("network.output_scale", scale, 0.0, None, low_open=True)

    def layer_scales(self) -> tuple[float, ...]:
        """Return the output scale of each layer."""
        n_layers = len(self.hidden) + 1
        if len(self.output_scale) == 1:
            return self.output_scale * n_layers
        return self.output_scale


@dataclass(frozen=True)
class TrainingConfig:
    """SGD on MNIST. The default schedule is η = 0.01 for epochs 1-10, 0.005 for 11-20 and
    0.0025 for 21-30 (Gokmen & Vlasov 2016, as in aihwkit's MNIST example)."""

    epochs: int = 30
    """Number of passes over the training set."""
    lr: float = 0.01
    """η: learning rate of the first epochs."""
    lr_decay: float = 0.5
    """Factor applied to η every ``lr_decay_every`` epochs."""
    lr_decay_every: int = 10
    """Epochs between learning-rate steps."""
    batch_size: int = 1
    """Samples per mini-batch; the forward passes of a batch share the weights, then each
    sample's rank-1 update is applied in turn."""
    seed: int = 0
    """Seed of every random number of the run: device parameters, initial weights,
    sample order and pulse streams."""
    train_limit: int | None = None
    """Use only the first N training samples (all if unset)."""
    test_limit: int | None = None
    """Use only the first N test samples (all if unset)."""
    shuffle: bool = True
    """Visit the training samples in a new seeded random order each epoch."""

    def __post_init__(self):
        _check_range("training.epochs", self.epochs, 1, None, kind=int)
        _check_range("training.lr", self.lr, 0.0, None, low_open=True)
        _check_range("training.lr_decay", self.lr_decay, 0.0, 1.0, low_open=True)
        _check_range("training.lr_decay_every", self.lr_decay_every, 1, None, kind=int)
        _check_range("training.batch_size", self.batch_size, 1, None, kind=int)
        _check_range("training.seed", self.seed, 0, 2**63 - 1, kind=int)
        if self.train_limit is not None:
            _check_range("training.train_limit", self.train_limit, 1, 60000, kind=int)
        if self.test_limit is not None:
            _check_range("training.test_limit", self.test_limit, 1, 10000, kind=int)
        if not isinstance(self.shuffle, bool):
            raise ConfigError("training.shuffle", self.shuffle, "must be true or false")

    def learning_rate(self, epoch: int) -> float:
        """Return η for ``epoch`` (counted from 1)."""
        return self.lr * self.lr_decay ** ((epoch - 1) // self.lr_decay_every)


@dataclass(frozen=True)
class RunConfig:
    """Data and result locations, and the thread count of the run."""

    data_dir: str | None = None
    """MNIST directory; unset means $CROSSBAR_EMU_DATA, else data/mnist in the working directory."""
    out: str | None = None
    """Result file; unset means runs/<timestamp>.h5 in the working directory."""
    overwrite: bool = False
    """Replace an existing result file instead of stopping."""
    threads: int | None = None
    """Numba threads; unset means every core."""

    def __post_init__(self):
        for key in ("data_dir", "out"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"run.{key}", value, "must be a path string")
        if self.threads is not None:
            _check_range("run.threads", self.threads, 1, None, kind=int)
        if not isinstance(self.overwrite, bool):
            raise ConfigError("run.overwrite", self.overwrite, "must be true or false")


def _index_tuples(key: str, value: Any, names: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    """Return ``value``, a list of [index, ...] entries of len(names) integers >= 0, as tuples."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(key, value, f"must be a list of [{', '.join(names)}] entries")
    entries = []
    for entry in value:
        if isinstance(entry, (str, bytes)) or not hasattr(entry, "__iter__") or len(entry) != len(names):
            raise ConfigError(key, entry, f"each entry must be [{', '.join(names)}], {len(names)} integers")
        for number in entry:
            _check_range(key, number, 0, None, kind=int)
        entries.append(tuple(entry))
    return tuple(entries)


@dataclass(frozen=True)
class TraceConfig:
    """Per-device conductance traces written to the result file during training.

    Tracing is on when any cell is selected. The selection forms add up, and a cell chosen
    twice is traced once. Layer, row and column indices count from 0; a row is a layer
    output, a column a layer input, and column n_in is the bias column. Indices are checked
    against the network's layer shapes when training starts.
    """

    random_cells: int = 0
    """K: cells drawn at random from each layer, without repetition, seeded from
    training.seed; a layer with fewer cells is traced whole. 0 draws none."""
    cells: tuple[tuple[int, int, int], ...] = ()
    """Single cells, as [layer, row, column] entries."""
    rows: tuple[tuple[int, int], ...] = ()
    """Whole rows, as [layer, row] entries: every device of one layer output."""
    cols: tuple[tuple[int, int], ...] = ()
    """Whole columns, as [layer, column] entries: every device driven by one input."""
    all_layers: tuple[int, ...] = ()
    """Layers whose every cell is traced; each may have at most 10,000 cells."""
    every: int = 1000
    """N, samples: record the traced cells after every N training samples of each epoch,
    counted from the epoch start, and at each epoch end."""
    flush_records: int = 100
    """M, records: traced values are kept in memory and written to the result file every
    M records, at each epoch end and when the run stops."""

    def __post_init__(self):
        _check_range("trace.random_cells", self.random_cells, 0, None, kind=int)
        object.__setattr__(self, "cells", _index_tuples("trace.cells", self.cells, ("layer", "row", "column")))
        object.__setattr__(self, "rows", _index_tuples("trace.rows", self.rows, ("layer", "row")))
        object.__setattr__(self, "cols", _index_tuples("trace.cols", self.cols, ("layer", "column")))
        layers = self.all_layers
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = (layers,)
        if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
            raise ConfigError("trace.all_layers", layers, "must be a list of layer indices, such as [2]")
        for layer in layers:
            _check_range("trace.all_layers", layer, 0, None, kind=int)
        object.__setattr__(self, "all_layers", tuple(layers))
        _check_range("trace.every", self.every, 1, None, kind=int)
        _check_range("trace.flush_records", self.flush_records, 1, None, kind=int)

    @property
    def active(self) -> bool:
        """Whether any cell is selected, so that the run records traces."""
        return bool(self.random_cells or self.cells or self.rows or self.cols or self.all_layers)


@dataclass(frozen=True)
class Config:
    """The resolved configuration of one run."""

    device: DeviceConfig = field(default_factory=DeviceConfig)
    tile: TileConfig = field(default_factory=TileConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    zero_shift: ZeroShiftConfig = field(default_factory=ZeroShiftConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)

    def __post_init__(self):
        if self.zero_shift.mode != "off" and self.device.kind != "softbounds":
            raise ConfigError(
                "zero_shift.mode",
                self.zero_shift.mode,
                f"needs a device with a symmetry point; device.kind = \"{self.device.kind}\" has none, "
                "so use softbounds or zero_shift.mode = \"off\"",
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Return the configuration as nested plain dicts (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        """Return the configuration as TOML; an unset value is written as a comment."""
        lines = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            for key, value in values.items():
                if value is None:
                    lines.append(f"# {key} is unset")
                else:
                    lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        return "\n".join(lines)

    def replace(self, overrides: dict[str, Any]) -> "Config":
        """Return a copy with dotted keys (``device.bound``) set; values are validated."""
        sections = {name: dict(values) for name, values in self.to_dict().items()}
        return config_from_dict(apply_overrides(sections, overrides))


_SECTIONS = {
    "device": DeviceConfig,
    "tile": TileConfig,
    "update": UpdateConfig,
    "zero_shift": ZeroShiftConfig,
    "network": NetworkConfig,
    "training": TrainingConfig,
    "run": RunConfig,
    "trace": TraceConfig,
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON escapes are valid TOML escapes; TOML also needs DEL escaped, and takes
        # characters outside the Basic Multilingual Plane literally, not as surrogates.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from nested dicts; unknown sections or keys raise ConfigError."""
    sections = {}
    for section, values in data.items():
        if section not in _SECTIONS:
            raise ConfigError(section, values, f"unknown section; valid sections: {', '.join(_SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(section, values, "must be a table of keys")
        cls = _SECTIONS[section]
        names = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in names:
                raise ConfigError(f"{section}.{key}", values[key], f"unknown key; valid keys: {', '.join(sorted(names))}")
        try:
            sections[section] = cls(**values)
        except TypeError as error:
            raise ConfigError(section, values, str(error)) from None
    return Config(**sections)


def read_toml(path: str | Path, option: str) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file raises ConfigError under ``option``."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(option, str(path), "file not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(option, str(path), f"not valid TOML: {error}") from None


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``device.bound``) in nested config dicts, in place, and return them.

    An unknown key raises ConfigError. Nothing is validated here; config_from_dict does that.
    """
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in _SECTIONS or name not in {f.name for f in dataclasses.fields(_SECTIONS[section])}:
            raise ConfigError(key, value, "unknown configuration key")
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(section, table, "must be a table of keys")
        table[name] = value
    return data


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a TOML configuration file; missing keys keep their defaults.

    ``overrides`` maps dotted keys (``device.bound``) to values that replace the file's
    before anything is validated, so a file value that an override replaces is never checked.
    """
    data = read_toml(path, "--config")
    return config_from_dict(apply_overrides(data, overrides or {}))
