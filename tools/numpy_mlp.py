"""The per-sample training algorithm in plain, vectorised NumPy: the speed baseline.

Same network, device law and pulsed update as crossbar-emu, written the way a NumPy user
would: Bernoulli streams as boolean matrices, coincidences counted by a matrix product,
and the n pulses of each cell applied as n masked array steps. Its random numbers come
from NumPy's generator, so its results agree with crossbar-emu in distribution only.
"""

from __future__ import annotations

import numpy as np


class NumpyMLP:
    """784-…-10 perceptron on soft-bound devices (or exact float updates), batch size 1."""

    def __init__(self, widths, *, pulsed=True, dw_min=0.001, bound=0.6, dtod=0.3, noise_std=0.3, bit_length=10, seed=0):
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.pulsed = pulsed
        self.dw_min = dw_min
        self.noise_std = noise_std
        self.bit_length = bit_length
        self.layers = []
        for n_in, n_out in zip(widths[:-1], widths[1:]):
            shape = (n_out, n_in + 1)
            b_max = np.abs(bound * (1 + dtod * rng.standard_normal(shape)))
            b_min = -np.abs(bound * (1 + dtod * rng.standard_normal(shape)))
            gain = 1 + dtod * rng.standard_normal(shape)
            limit = 1 / np.sqrt(n_in)
            w = np.clip(rng.uniform(-limit, limit, shape), b_min, b_max)
            self.layers.append({"w": w, "alpha": dw_min * np.abs(gain), "b_max": b_max, "b_min": b_min})

    def _pulse(self, layer, x, d, lr):
        w = layer["w"]
        gain = np.sqrt(lr / (self.bit_length * self.dw_min))
        x_bits = self.rng.random((self.bit_length, x.size)) < np.minimum(1.0, gain * np.abs(x))
        d_bits = self.rng.random((self.bit_length, d.size)) < np.minimum(1.0, gain * np.abs(d))
        counts = d_bits.T.astype(np.int32) @ x_bits.astype(np.int32)
        up = (d > 0)[:, None] == (x > 0)[None, :]
        pulses = int(counts.sum())
        for k in range(1, int(counts.max(initial=0)) + 1):
            cells = counts >= k
            g = w[cells]
            noise = 1.0 + self.noise_std * self.rng.standard_normal(g.size)
            step_up = layer["alpha"][cells] * (1 - g / layer["b_max"][cells]) * noise
            step_down = -layer["alpha"][cells] * (1 - g / layer["b_min"][cells]) * noise
            g = g + np.where(up[cells], step_up, step_down)
            w[cells] = np.clip(g, layer["b_min"][cells], layer["b_max"][cells])
        return pulses

    def train_sample(self, image, label, lr):
        """Run one SGD step; return the number of pulses applied."""
        activations = [image]
        for k, layer in enumerate(self.layers):
            z = layer["w"] @ np.append(activations[-1], 1.0)
            if k < len(self.layers) - 1:
                activations.append(1 / (1 + np.exp(-z)))
            else:
                e = np.exp(z - z.max())
                activations.append(e / e.sum())
        d = -activations[-1]
        d[label] += 1.0
        errors = [d]
        for k in range(len(self.layers) - 1, 0, -1):
            a = activations[k]
            errors.insert(0, (self.layers[k]["w"].T @ errors[0])[:-1] * a * (1 - a))
        pulses = 0
        for layer, a, d in zip(self.layers, activations[:-1], errors):
            x = np.append(a, 1.0)
            if self.pulsed:
                pulses += self._pulse(layer, x, d, lr)
            else:
                layer["w"] += lr * np.outer(d, x)
        return pulses
