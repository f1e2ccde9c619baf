"""Slow, obviously correct NumPy versions of the kernels, for the tests to compare against.

The random numbers are the same counter-based SplitMix64 draws as the kernels make,
computed here with Python integers, so a kernel and its naive version can be compared value
by value on the same seed.
"""

from __future__ import annotations

import math

import numpy as np

MASK = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
MIX_1 = 0xBF58476D1CE4E5B9
MIX_2 = 0x94D049BB133111EB

STREAM_X_BITS = 1
STREAM_D_BITS = 2
STREAM_PULSE_NOISE = 3


def mix64(z: int) -> int:
    z &= MASK
    z = ((z ^ (z >> 30)) * MIX_1) & MASK
    z = ((z ^ (z >> 27)) * MIX_2) & MASK
    return z ^ (z >> 31)


def stream_key(seed: int, update_index: int, stream: int, index: int) -> int:
    key = mix64(seed + GOLDEN_GAMMA)
    key = mix64(key ^ ((update_index * GOLDEN_GAMMA + stream) & MASK))
    return mix64(key + index * MIX_2)


def random_bits(key: int, counter: int) -> int:
    return mix64(key + (counter + 1) * GOLDEN_GAMMA)


def uniform(key: int, counter: int) -> float:
    return (random_bits(key, counter) >> 11) / 2.0**53


def _ziggurat_tables(n_layers=256, r=3.6541528853610088, area=0.00492867323399):
    """Ziggurat layers of equal area: x_1 = r, x_{i+1} = f^-1(f(x_i) + area / x_i), x_n = 0."""
    f = lambda x: math.exp(-0.5 * x * x)  # noqa: E731
    x = [area / f(r), r]
    while len(x) < n_layers:
        x.append(math.sqrt(-2.0 * math.log(f(x[-1]) + area / x[-1])))
    x.append(0.0)
    return x, [f(value) for value in x]


ZIGGURAT_R = 3.6541528853610088
_ZIG_X, _ZIG_F = _ziggurat_tables()


def normal(key: int, counter: int) -> tuple[float, int]:
    """Return (N(0, 1) variate, next counter): the ziggurat, written out step by step."""
    while True:
        bits = random_bits(key, counter)
        counter += 1
        layer = bits & 255
        negative = (bits >> 8) & 1
        mantissa = bits >> 11
        x = mantissa * (_ZIG_X[layer] / 2.0**53)
        if mantissa < math.floor(2.0**53 * _ZIG_X[layer + 1] / _ZIG_X[layer]):
            return (-x if negative else x), counter
        if layer == 0:
            while True:
                tail = -math.log(1.0 - uniform(key, counter)) / ZIGGURAT_R
                height = -math.log(1.0 - uniform(key, counter + 1))
                counter += 2
                if 2 * height > tail * tail:
                    return (-(ZIGGURAT_R + tail) if negative else ZIGGURAT_R + tail), counter
        height = _ZIG_F[layer] + uniform(key, counter) * (_ZIG_F[layer + 1] - _ZIG_F[layer])
        counter += 1
        if height < math.exp(-0.5 * x * x):
            return (-x if negative else x), counter


def draw_stream(value: float, scale: float, bit_length: int, seed: int, update_index: int, stream: int, index: int) -> list[bool]:
    """Return the BL slots of one Bernoulli stream as booleans.

    Slot 2m compares the low 32 bits of draw m with the probability, slot 2m + 1 the high
    32 bits. A probability of 1 sets every slot without drawing.
    """
    probability = min(1.0, scale * abs(value))
    if probability <= 0.0:
        return [False] * bit_length
    if probability >= 1.0:
        return [True] * bit_length
    key = stream_key(seed, update_index, stream, index)
    slots = []
    for slot in range(bit_length):
        bits = random_bits(key, slot // 2)
        half = bits & 0xFFFFFFFF if slot % 2 == 0 else bits >> 32
        slots.append(half / 2.0**32 < probability)
    return slots


def soft_bounds_step(g: float, up: bool, alpha: float, b_max: float, b_min: float, noise: float, additive: bool) -> float:
    """Return g after one pulse, straight from the device law."""
    bound = b_max if up else b_min
    sign = 1.0 if up else -1.0
    if additive:
        g = g + sign * alpha * (1.0 - g / bound + noise)
    else:
        g = g + sign * alpha * (1.0 - g / bound) * (1.0 + noise)
    return min(max(g, b_min), b_max)


def pulsed_update(
    conductance, reference, alpha_up, alpha_down, b_max, b_min, x, bias, d,
    scale_x, scale_d, bit_length, noise_std, additive, seed, update_index,
):
    """Return (new conductance, pulses_up per row, pulses_down per row) of one pulsed update.

    Slot by slot, in time order. In every slot where row i's bit is set, each column whose
    bit is also set gives cell (i, j) one pulse in sign(x_j d_i). Columns go in increasing
    order, and each pulse takes a fresh noise draw from the row's stream.
    """
    g = np.array(conductance, dtype=np.float64, copy=True)
    n_rows, n_cols = g.shape
    x_full = np.append(np.asarray(x, dtype=np.float64), bias)
    x_streams = [draw_stream(x_full[j], scale_x, bit_length, seed, update_index, STREAM_X_BITS, j) for j in range(n_cols)]
    d_streams = [draw_stream(d[i], scale_d, bit_length, seed, update_index, STREAM_D_BITS, i) for i in range(n_rows)]
    pulses_up = np.zeros(n_rows, dtype=np.int64)
    pulses_down = np.zeros(n_rows, dtype=np.int64)
    for i in range(n_rows):
        key = stream_key(seed, update_index, STREAM_PULSE_NOISE, i)
        counter = 0
        for slot in range(bit_length):
            if not d_streams[i][slot]:
                continue
            for j in range(n_cols):
                if not x_streams[j][slot]:
                    continue
                up = (d[i] > 0) == (x_full[j] > 0)
                if noise_std > 0:
                    xi, counter = normal(key, counter)
                    noise = noise_std * xi
                else:
                    noise = 0.0
                alpha = alpha_up[i, j] if up else alpha_down[i, j]
                g[i, j] = soft_bounds_step(g[i, j], up, alpha, b_max[i, j], b_min[i, j], noise, additive)
                if up:
                    pulses_up[i] += 1
                else:
                    pulses_down[i] += 1
    return g, pulses_up, pulses_down


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


class NaiveMLP:
    """The per-sample SGD algorithm in plain NumPy, on weight matrices with a bias column.

    ``update`` is called as update(layer_index, weights, x_with_bias, d, device_rate,
    update_index) and must change ``weights`` in place; the default is the exact update.
    """

    def __init__(self, weights: list[np.ndarray], scales: list[float], update=None):
        self.weights = [np.array(w, dtype=np.float64, copy=True) for w in weights]
        self.scales = scales
        self.update = update or self.exact_update

    @staticmethod
    def exact_update(index, weights, x, d, rate, update_index):
        weights += rate * np.outer(d, x)

    def train_sample(self, image, label, lr, update_index):
        activations = [np.asarray(image, dtype=np.float64)]
        for k, (w, s) in enumerate(zip(self.weights, self.scales)):
            z = s * (w @ np.append(activations[-1], 1.0))
            activations.append(softmax(z) if k == len(self.weights) - 1 else sigmoid(z))
        d = -activations[-1]
        d[label] += 1.0
        errors = [d]
        for k in range(len(self.weights) - 1, 0, -1):
            back = self.scales[k] * (self.weights[k].T @ errors[0])[:-1]
            a = activations[k]
            errors.insert(0, back * a * (1.0 - a))
        for k, w in enumerate(self.weights):
            self.update(k, w, np.append(activations[k], 1.0), errors[k], lr / self.scales[k], update_index)
        return -math.log(activations[-1][label])


STREAM_CALIBRATION_NOISE = 4


def alternating_pairs(conductance, alpha_up, alpha_down, b_max, b_min, n_pairs, n_average, noise_std, additive, seed, round_index):
    """Return (final conductance, read-out) after n_pairs up/down pairs on every device."""
    g = np.array(conductance, dtype=np.float64, copy=True)
    readout = np.zeros_like(g)
    n_rows, n_cols = g.shape
    for i in range(n_rows):
        key = stream_key(seed, round_index, STREAM_CALIBRATION_NOISE, i)
        counter = 0
        for j in range(n_cols):
            states = []
            for _ in range(n_pairs):
                noise_up, noise_down = 0.0, 0.0
                if noise_std > 0:
                    xi_up, counter = normal(key, counter)
                    xi_down, counter = normal(key, counter)
                    noise_up, noise_down = noise_std * xi_up, noise_std * xi_down
                g[i, j] = soft_bounds_step(g[i, j], True, alpha_up[i, j], b_max[i, j], b_min[i, j], noise_up, additive)
                states.append(g[i, j])
                g[i, j] = soft_bounds_step(g[i, j], False, alpha_down[i, j], b_max[i, j], b_min[i, j], noise_down, additive)
                states.append(g[i, j])
            readout[i, j] = np.mean(states[-2 * n_average :])
    return g, readout
