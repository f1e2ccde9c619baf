"""The multilayer perceptron on crossbar layers: sigmoid hidden layers, softmax output."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba.typed import List

from .kernels import network as fused

from .config import INIT_FAN_IN, Config
from .tiles import CrossbarLayer
from .zero_shift import Calibration, zero_shift_layer

# Labels of the independent random streams derived from the run seed.
_SEED_DEVICE_PARAMETERS = 1
_SEED_INITIAL_WEIGHTS = 2
SEED_SAMPLE_ORDER = 3
_SEED_REFERENCE_ERROR = 4
SEED_TRACE_CELLS = 5


def child_rng(seed: int, purpose: int, *keys: int) -> np.random.Generator:
    """Return a generator for one purpose, independent of every other purpose and key."""
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, *keys]))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def softmax(z: np.ndarray) -> np.ndarray:
    """Return softmax along the last axis, shifted by the maximum for stability."""
    shifted = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return shifted / np.sum(shifted, axis=-1, keepdims=True)


@dataclass
class SampleResult:
    """Outcome of one training sample."""

    loss: float
    correct: bool
    pulses_up: int
    pulses_down: int


class CrossbarMLP:
    """A 784-…-10 perceptron whose layers live on crossbar tiles."""

    def __init__(self, config: Config, n_inputs: int = 784, n_classes: int = 10):
        self.config = config
        seed = config.training.seed
        widths = [n_inputs, *config.network.hidden, n_classes]
        scales = config.network.layer_scales()
        self.layers: list[CrossbarLayer] = []
        self.calibrations: list[Calibration] = []
        for index, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            layer = CrossbarLayer(
                n_in,
                n_out,
                device=config.device,
                tile=config.tile,
                update_config=config.update,
                out_scale=scales[index],
                seed=seed,
                index=index,
                param_rng=child_rng(seed, _SEED_DEVICE_PARAMETERS, index),
            )
            # Zero-shifting sets the references first; the initial weights are then
            # programmed around them: g = g_ref + w_init / s, clipped to the device bounds.
            calibration = zero_shift_layer(
                layer, config.zero_shift, seed=layer.stream_seed, rng=child_rng(seed, _SEED_REFERENCE_ERROR, index)
            )
            layer.program_weights(self.initial_weights(index, n_in, n_out) / layer.out_scale)
            self.layers.append(layer)
            self.calibrations.append(calibration)

    def initial_weights(self, index: int, n_in: int, n_out: int) -> np.ndarray:
        """Return the effective initial weights of layer ``index``, bias column included.

        Uniform in ±1/√n_in by default. The draw depends only on the seed and the layer, so
        runs with different devices start from the same effective weights.
        """
        bound = self.config.network.init_bound
        if bound == INIT_FAN_IN:
            bound = 1.0 / np.sqrt(n_in)
        rng = child_rng(self.config.training.seed, _SEED_INITIAL_WEIGHTS, index)
        return rng.uniform(-bound, bound, size=(n_out, n_in + 1))

    def forward(self, x: np.ndarray) -> list[np.ndarray]:
        """Return the activations of every layer for one input, the input first."""
        activations = [x]
        for layer in self.layers[:-1]:
            activations.append(sigmoid(layer.forward(activations[-1])))
        activations.append(softmax(self.layers[-1].forward(activations[-1])))
        return activations

    def errors(self, activations: list[np.ndarray], label: int) -> list[np.ndarray]:
        """Return the negative gradient of the cross-entropy at each layer's output."""
        probabilities = activations[-1]
        d = -probabilities
        d[label] += 1.0
        errors = [d]
        for position in range(len(self.layers) - 1, 0, -1):
            back = self.layers[position].backward(errors[0])[:-1]
            a = activations[position]
            errors.insert(0, back * a * (1.0 - a))
        return errors

    def train_batch(self, images: np.ndarray, labels: np.ndarray, learning_rate: float, first_update: int) -> list[SampleResult]:
        """Train on a mini-batch: all forward and backward passes, then one update per sample.

        The cross-entropy is averaged over the batch, so each sample's rank-1 update carries
        η / batch size. Update k of the batch uses the pulse streams of update index
        ``first_update + k``.
        """
        passes = []
        results = []
        for x, label in zip(images, labels):
            activations = self.forward(x)
            errors = self.errors(activations, int(label))
            passes.append((activations, errors))
            probability = activations[-1][label]
            loss = -float(np.log(max(probability, 1e-300)))
            correct = int(np.argmax(activations[-1])) == int(label)
            results.append(SampleResult(loss, correct, 0, 0))

        rate = learning_rate / len(images)
        for k, (activations, errors) in enumerate(passes):
            for layer, x, d in zip(self.layers, activations[:-1], errors):
                up, down = layer.update(x, d, rate, first_update + k)
                results[k].pulses_up += up
                results[k].pulses_down += down
        return results

    def train_samples(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        order: np.ndarray,
        start: int,
        stop: int,
        learning_rate: float,
        first_update: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Train with batch size 1 on samples order[start:stop] in one compiled call.

        Gives the same updates as ``train_batch`` on one sample at a time. Returns per-sample
        losses and correctness, and the up and down pulses applied to each layer.
        """
        layers = self.layers
        device = self.config.device
        n = stop - start
        losses = np.empty(n)
        correct = np.empty(n, dtype=np.bool_)
        pulses_up = np.zeros(len(layers), dtype=np.int64)
        pulses_down = np.zeros(len(layers), dtype=np.int64)
        fused.train_samples(
            images=images,
            labels=labels,
            order=order,
            start=start,
            stop=stop,
            **self._kernel_arrays(),
            out_scales=np.array([layer.out_scale for layer in layers]),
            stream_seeds=np.array([layer.stream_seed for layer in layers], dtype=np.int64),
            pulsed=layers[0].is_pulsed,
            learning_rate=float(learning_rate),
            bit_length=self.config.update.bit_length,
            dw_min=device.dw_min,
            noise_std=device.noise_std,
            noise_kind=layers[0].noise_kind,
            update_management=self.config.update.update_management,
            first_update_index=first_update,
            losses=losses,
            correct=correct,
            pulses_up=pulses_up,
            pulses_down=pulses_down,
        )
        return losses, correct, pulses_up, pulses_down

    def _kernel_arrays(self) -> dict[str, List]:
        """Return the per-layer arrays as typed lists for the fused kernel, built once.

        Building the lists costs about 0.2 ms, so they are kept between calls and rebuilt
        only when a layer array has been replaced (``program_reference`` assigns a new one).
        """
        arrays = {
            "weights_t": [layer.weights_t for layer in self.layers],
            "conductance": [layer.conductance for layer in self.layers],
            "reference": [layer.reference for layer in self.layers],
            "alpha_up": [layer.params.alpha_up for layer in self.layers],
            "alpha_down": [layer.params.alpha_down for layer in self.layers],
            "b_max": [layer.params.b_max for layer in self.layers],
            "b_min": [layer.params.b_min for layer in self.layers],
            "col_bounds": [layer.col_bounds for layer in self.layers],
            "row_bounds": [layer.row_bounds for layer in self.layers],
            "cell_up": [layer.cell_pulses_up for layer in self.layers],
            "cell_down": [layer.cell_pulses_down for layer in self.layers],
        }
        identity = tuple(id(array) for group in arrays.values() for array in group)
        if getattr(self, "_kernel_identity", None) != identity:
            self._kernel_lists = {name: List(group) for name, group in arrays.items()}
            self._kernel_identity = identity
        return self._kernel_lists

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        """Return the output layer's pre-softmax values for a batch of inputs."""
        a = images
        for layer in self.layers[:-1]:
            a = sigmoid(layer.forward_batch(a))
        return self.layers[-1].forward_batch(a)

    def evaluate(self, images: np.ndarray, labels: np.ndarray, chunk: int = 2000) -> tuple[float, float]:
        """Return the mean cross-entropy and the error rate on a labelled set."""
        total_loss = 0.0
        wrong = 0
        for start in range(0, len(images), chunk):
            logits = self.predict_logits(images[start : start + chunk])
            target = labels[start : start + chunk]
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            total_loss -= float(log_probabilities[np.arange(len(target)), target].sum())
            wrong += int(np.count_nonzero(np.argmax(logits, axis=1) != target))
        return total_loss / len(images), wrong / len(images)
