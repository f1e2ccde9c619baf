"""A network layer mapped onto crossbar tiles.

A layer of n_in inputs and n_out outputs is stored as n_out × (n_in + 1) devices, the last
column carrying the bias driven by a constant 1. The devices are split over tiles of at most
``max_rows`` × ``max_cols``: tile (r, c) contains rows row_bounds[r]:row_bounds[r + 1] and
columns col_bounds[c]:col_bounds[c + 1]. Each tile computes partial sums that the
periphery adds digitally and multiplies by the layer's output scale s.

The weight of a cross-point is w = g − g_ref. The layer keeps three arrays of the full
layer shape: the device conductances g, the reference conductance seen by each cell and the
weights w, which the update kernels keep equal to g − g_ref at every cell they touch. The
weights are stored transposed (``weights_t``, n_in + 1 rows) for the matrix-vector products;
``weights`` is the (n_out, n_in + 1) view of the same memory.
"""

from __future__ import annotations

import math

import numpy as np

from .config import DeviceConfig, TileConfig, UpdateConfig
from .devices import DeviceParameters, draw_soft_bounds, unbounded_parameters
from .kernels import device_laws, mvm, update


def tile_bounds(size: int, max_size: int) -> np.ndarray:
    """Return the boundaries of consecutive tiles of at most ``max_size`` covering ``size``.

    Tiles are filled in order, so only the last one may be partial: 785 columns over tiles
    of 512 give [0, 512, 785].
    """
    n_tiles = math.ceil(size / max_size)
    bounds = [min(t * max_size, size) for t in range(n_tiles)] + [size]
    return np.asarray(bounds, dtype=np.int64)


class CrossbarLayer:
    """One fully connected layer on soft-bound (or floating-point) crossbar tiles.

    Parameters
    ----------
    n_in, n_out:
        Layer inputs (without the bias) and outputs.
    device, tile, update_config:
        Device model, tile geometry and reference layout, pulsed-update settings.
    out_scale:
        s, the digital gain applied to every tile output; the effective weight is s w.
    seed:
        The run seed; it keys the pulse streams together with the layer index.
    index:
        Position of the layer in the network, 0 for the first.
    param_rng:
        Generator for the device-to-device parameters.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        device: DeviceConfig,
        tile: TileConfig,
        update_config: UpdateConfig,
        out_scale: float,
        seed: int,
        index: int,
        param_rng: np.random.Generator,
    ):
        self.n_in = n_in
        self.n_out = n_out
        self.n_cols = n_in + 1
        self.device = device
        self.tile = tile
        self.update_config = update_config
        self.out_scale = float(out_scale)
        self.index = index
        # Pulse streams of each layer get their own key, derived from the run seed.
        # 63 bits, so the key passes to the kernels as a signed 64-bit integer.
        entropy = np.random.SeedSequence([seed, 0xC0FFEE, index]).generate_state(1, np.uint64)[0]
        self.stream_seed = int(entropy) >> 1
        self.row_bounds = tile_bounds(n_out, tile.max_rows)
        self.col_bounds = tile_bounds(self.n_cols, tile.max_cols)
        self.noise_kind = (
            device_laws.NOISE_ADDITIVE if device.noise == "additive" else device_laws.NOISE_MULTIPLICATIVE
        )

        shape = (n_out, self.n_cols)
        if device.kind == "softbounds":
            self.params: DeviceParameters = draw_soft_bounds(device, shape, param_rng)
        else:
            self.params = unbounded_parameters(device, shape)

        self.reference_values = self._reference_storage(tile.reference_value)
        self.reference = self.expand_reference(self.reference_values)
        self.conductance = self.reference.copy()
        self.weights_t = np.zeros((self.n_cols, n_out))
        # Running totals of the pulses each cell received, kept by the update kernels.
        self.cell_pulses_up = np.zeros(shape, dtype=np.int64)
        self.cell_pulses_down = np.zeros(shape, dtype=np.int64)
        self._pulses_up = np.zeros(n_out, dtype=np.int64)
        self._pulses_down = np.zeros(n_out, dtype=np.int64)

    @property
    def weights(self) -> np.ndarray:
        """w = g − g_ref, (n_out, n_in + 1): a view of ``weights_t``, writable in place."""
        return self.weights_t.T

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_out, self.n_cols)

    @property
    def n_tiles(self) -> tuple[int, int]:
        """Tiles along the rows and along the columns."""
        return (self.row_bounds.size - 1, self.col_bounds.size - 1)

    @property
    def is_pulsed(self) -> bool:
        return self.device.kind == "softbounds"

    def _reference_storage(self, value: float) -> np.ndarray:
        """Return the reference devices as stored: one per cell, or one per row of each tile."""
        if self.tile.reference == "cell":
            return np.full(self.shape, float(value))
        return np.full((self.n_out, self.n_tiles[1]), float(value))

    def expand_reference(self, values: np.ndarray) -> np.ndarray:
        """Return the reference conductance each cell is read against, of the layer's shape."""
        if self.tile.reference == "cell":
            return np.array(values, dtype=np.float64, copy=True)
        widths = np.diff(self.col_bounds)
        return np.repeat(values, widths, axis=1)

    def program_reference(self, values: np.ndarray) -> None:
        """Set the reference devices (layout of ``reference_values``); weights follow."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != self.reference_values.shape:
            raise ValueError(
                f"reference values of shape {values.shape} do not fit layer {self.index}: "
                f"the {self.tile.reference} layout needs {self.reference_values.shape}"
            )
        self.reference_values = values.copy()
        self.reference = self.expand_reference(values)
        np.subtract(self.conductance, self.reference, out=self.weights)

    def program_weights(self, weights: np.ndarray) -> None:
        """Program g = g_ref + w, clipped to each device's own bounds in conductance.

        A shifted reference therefore shifts the reachable weights to [b_min − g_ref, b_max − g_ref].
        """
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != self.shape:
            raise ValueError(f"weights of shape {weights.shape} do not fit layer {self.index} of shape {self.shape}")
        np.clip(self.reference + weights, self.params.b_min, self.params.b_max, out=self.conductance)
        np.subtract(self.conductance, self.reference, out=self.weights)

    def forward(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Return y = s W [x, 1] for one input vector of length n_in."""
        if out is None:
            out = np.empty(self.n_out)
        mvm.forward(weights_t=self.weights_t, x=x, bias=1.0, col_bounds=self.col_bounds, out_scale=self.out_scale, out=out)
        return out

    def forward_batch(self, inputs: np.ndarray) -> np.ndarray:
        """Return s W [x, 1] for each row x of ``inputs`` (n_samples × n_in)."""
        out = np.empty((inputs.shape[0], self.n_out))
        mvm.forward_batch(
            weights_t=self.weights_t, inputs=inputs, bias=1.0, col_bounds=self.col_bounds, out_scale=self.out_scale, out=out
        )
        return out

    def backward(self, d: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Return z = s Wᵀ d, of length n_in + 1 (the bias column's entry last)."""
        if out is None:
            out = np.empty(self.n_cols)
        mvm.backward(weights_t=self.weights_t, d=d, row_bounds=self.row_bounds, out_scale=self.out_scale, out=out)
        return out

    def update(self, x: np.ndarray, d: np.ndarray, learning_rate: float, update_index: int) -> tuple[int, int]:
        """Apply the rank-1 update for input x and error d (the negative gradient of y).

        The effective weight s w must move by η d [x, 1]ᵀ, so the devices receive
        Δw = (η / s) d [x, 1]ᵀ. Returns the up and down pulses applied.
        """
        device_rate = learning_rate / self.out_scale
        if not self.is_pulsed:
            update.exact_update(
                conductance=self.conductance,
                reference=self.reference,
                weights_t=self.weights_t,
                x=x,
                bias=1.0,
                d=d,
                learning_rate=device_rate,
            )
            return 0, 0

        # η = BL Δw_min C_x C_d; without update management C_x = C_d = C.
        gain = math.sqrt(device_rate / (self.update_config.bit_length * self.device.dw_min))
        scale_x = scale_d = gain
        if self.update_config.update_management:
            x_max = max(float(np.max(np.abs(x), initial=0.0)), 1.0)
            d_max = float(np.max(np.abs(d), initial=0.0))
            if d_max == 0.0:
                return 0, 0
            balance = math.sqrt(d_max / x_max)
            scale_x = gain * balance
            scale_d = gain / balance

        update.pulsed_update(
            conductance=self.conductance,
            reference=self.reference,
            weights_t=self.weights_t,
            alpha_up=self.params.alpha_up,
            alpha_down=self.params.alpha_down,
            b_max=self.params.b_max,
            b_min=self.params.b_min,
            x=x,
            bias=1.0,
            d=d,
            scale_x=scale_x,
            scale_d=scale_d,
            bit_length=self.update_config.bit_length,
            noise_std=self.device.noise_std,
            noise_kind=self.noise_kind,
            seed=self.stream_seed,
            update_index=update_index,
            pulses_up=self._pulses_up,
            pulses_down=self._pulses_down,
            cell_up=self.cell_pulses_up,
            cell_down=self.cell_pulses_down,
        )
        return int(self._pulses_up.sum()), int(self._pulses_down.sum())
