"""Layers and networks: tile splitting, output scale, training against plain NumPy, threads."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from crossbar_emu import Config, CrossbarLayer, CrossbarMLP
from crossbar_emu.network import child_rng
from crossbar_emu.tiles import tile_bounds

import naive


def _layer(n_in, n_out, tile_size, reference="cell", seed=3, **device):
    config = Config().replace({"tile.max_rows": tile_size[0], "tile.max_cols": tile_size[1], "tile.reference": reference, **{f"device.{k}": v for k, v in device.items()}})
    return CrossbarLayer(
        n_in, n_out, device=config.device, tile=config.tile, update_config=config.update,
        out_scale=1.0, seed=seed, index=0, param_rng=child_rng(seed, 1, 0),
    )


def test_tile_bounds():
    np.testing.assert_array_equal(tile_bounds(785, 512), [0, 512, 785])
    np.testing.assert_array_equal(tile_bounds(256, 512), [0, 256])
    np.testing.assert_array_equal(tile_bounds(512, 512), [0, 512])
    np.testing.assert_array_equal(tile_bounds(10, 3), [0, 3, 6, 9, 10])


def test_layer_maps_to_expected_tiles():
    layer = _layer(784, 256, (512, 512))
    assert layer.shape == (256, 785)
    assert layer.n_tiles == (1, 2)
    layer = _layer(784, 256, (100, 300))
    assert layer.n_tiles == (3, 3)


def test_split_layer_matches_unsplit():
    generator = np.random.default_rng(0)
    whole = _layer(50, 30, (512, 512))
    split = _layer(50, 30, (7, 16))
    initial = generator.uniform(-0.2, 0.2, whole.shape)
    whole.program_weights(initial)
    split.program_weights(initial)
    np.testing.assert_array_equal(whole.params.b_max, split.params.b_max)

    for k in range(30):
        x = np.where(generator.random(50) < 0.5, generator.random(50), 0.0)
        d = generator.normal(0, 0.3, 30)
        np.testing.assert_allclose(split.forward(x), whole.forward(x), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(split.backward(d), whole.backward(d), rtol=1e-12, atol=1e-14)
        pulses_split = split.update(x, d, 0.01, k)
        pulses_whole = whole.update(x, d, 0.01, k)
        assert pulses_split == pulses_whole
    # The streams are keyed by global row and column, so splitting does not change them.
    np.testing.assert_array_equal(split.conductance, whole.conductance)
    assert sum(pulses_whole) > 0


def test_column_reference_is_shared_per_row_and_tile():
    layer = _layer(9, 4, (512, 4), reference="column")
    assert layer.reference_values.shape == (4, 3)
    values = np.arange(12.0).reshape(4, 3) / 100
    layer.program_weights(np.zeros(layer.shape))
    layer.program_reference(values)
    expected = np.repeat(values, [4, 4, 2], axis=1)
    np.testing.assert_array_equal(layer.reference, expected)
    np.testing.assert_array_equal(layer.weights, layer.conductance - expected)
    with pytest.raises(ValueError, match="column layout needs"):
        layer.program_reference(np.zeros((4, 10)))


def test_program_weights_clips_to_device_bounds():
    layer = _layer(20, 10, (512, 512))
    layer.program_reference(np.full(layer.shape, 0.2))
    layer.program_weights(np.full(layer.shape, 5.0))
    np.testing.assert_array_equal(layer.conductance, layer.params.b_max)
    # The reachable weight shifts with the reference: b_max - g_ref.
    np.testing.assert_allclose(layer.weights, layer.params.b_max - 0.2)
    layer.program_weights(np.full(layer.shape, -5.0))
    np.testing.assert_array_equal(layer.conductance, layer.params.b_min)


def test_imbalance_convention():
    # u > 0 weakens down pulses to Δw_min (1 - u); u < 0 weakens up pulses.
    for u in (0.5, -0.5):
        layer = _layer(200, 100, (512, 512), imbalance=u, up_down_dtod=0.0, dw_min_dtod=0.0)
        strong, weak = (layer.params.alpha_up, layer.params.alpha_down) if u > 0 else (layer.params.alpha_down, layer.params.alpha_up)
        np.testing.assert_allclose(strong, 0.001)
        np.testing.assert_allclose(weak, 0.0005)


def test_device_variation_statistics():
    layer = _layer(400, 300, (512, 512))
    p = layer.params
    assert np.all(p.b_max > 0)
    assert np.all(p.b_min < 0)
    assert np.all(p.alpha_up > 0)
    # Spreads of 0.3 around β = 0.6 and Δw_min = 0.001, within a few standard errors.
    n = p.b_max.size
    assert abs(p.b_max.mean() - 0.6) < 5 * 0.18 / np.sqrt(n)
    assert abs(p.b_max.std() / 0.6 - 0.3) < 0.01
    assert abs(p.alpha_up.mean() - 0.001) < 5 * 0.0003 / np.sqrt(n)
    assert abs(np.corrcoef(p.alpha_up.ravel(), p.alpha_down.ravel())[0, 1] - 1.0) < 0.01


def test_output_scale_keeps_effective_trajectory(mnist):
    # With s = 4 the devices hold w / 4 and learn at η / 4, so s w follows the s = 1 run.
    images = mnist.train_images[:200].astype(np.float64)
    labels = mnist.train_labels[:200]
    runs = []
    for scale in (1.0, 4.0):
        config = Config().replace({"device.kind": "float", "network.output_scale": [scale], "network.hidden": [32]})
        net = CrossbarMLP(config)
        for k in range(200):
            net.train_batch(images[k : k + 1], labels[k : k + 1], 0.05, k)
        runs.append([layer.out_scale * layer.weights for layer in net.layers])
    for plain, scaled in zip(*runs):
        np.testing.assert_allclose(scaled, plain, rtol=1e-9, atol=1e-12)


# --- training against plain NumPy ---------------------------------------------------------


def _naive_copy(net):
    return naive.NaiveMLP([layer.weights for layer in net.layers], [layer.out_scale for layer in net.layers])


def test_float_training_matches_numpy(mnist):
    config = Config().replace({"device.kind": "float", "network.output_scale": [1.0, 2.0, 0.5]})
    net = CrossbarMLP(config)
    reference = _naive_copy(net)
    images = mnist.train_images[:300].astype(np.float64)
    labels = mnist.train_labels[:300]
    for k in range(300):
        result = net.train_batch(images[k : k + 1], labels[k : k + 1], 0.01, k)[0]
        loss = reference.train_sample(images[k], labels[k], 0.01, k)
        assert result.loss == pytest.approx(loss, rel=1e-9)
    for layer, weights in zip(net.layers, reference.weights):
        np.testing.assert_allclose(layer.weights, weights, rtol=1e-9, atol=1e-12)


def test_minibatch_applies_each_sample_update(mnist):
    config = Config().replace({"device.kind": "float", "network.hidden": [20]})
    net = CrossbarMLP(config)
    reference = _naive_copy(net)
    images = mnist.train_images[:4].astype(np.float64)
    labels = mnist.train_labels[:4]
    net.train_batch(images, labels, 0.1, 0)
    # Plain NumPy: every gradient from the same weights, each applied with η / 4.
    gradients = []
    for image, label in zip(images, labels):
        frozen = naive.NaiveMLP(reference.weights, reference.scales, update=lambda k, w, x, d, rate, i: gradients.append((k, np.outer(d, x))))
        frozen.train_sample(image, label, 0.1, 0)
    for k, step in gradients:
        reference.weights[k] += 0.1 / 4 * step
    for layer, weights in zip(net.layers, reference.weights):
        np.testing.assert_allclose(layer.weights, weights, rtol=1e-9, atol=1e-12)


def test_pulsed_training_matches_numpy(mnist):
    config = Config().replace({"network.hidden": [12], "device.imbalance": 0.3})
    net = CrossbarMLP(config)
    layers = net.layers
    state = [layer.conductance.copy() for layer in layers]

    def pulsed(k, weights, x, d, rate, update_index):
        layer = layers[k]
        gain = np.sqrt(rate / (10 * 0.001))
        g, _, _ = naive.pulsed_update(
            state[k], layer.reference, layer.params.alpha_up, layer.params.alpha_down, layer.params.b_max,
            layer.params.b_min, x[:-1], x[-1], d, gain, gain, 10, 0.3, False, layer.stream_seed, update_index,
        )
        state[k] = g
        weights[...] = g - layer.reference

    reference = naive.NaiveMLP([layer.weights for layer in layers], [1.0, 1.0], update=pulsed)
    images = mnist.train_images[:25].astype(np.float64)
    labels = mnist.train_labels[:25]
    for k in range(25):
        net.train_batch(images[k : k + 1], labels[k : k + 1], 0.01, k)
        reference.train_sample(images[k], labels[k], 0.01, k)
    for layer, g in zip(layers, state):
        np.testing.assert_allclose(layer.conductance, g, rtol=1e-9, atol=1e-12)
    assert np.any(layers[0].conductance != layers[0].reference + net.initial_weights(0, 784, 12))


# --- reproducibility ----------------------------------------------------------------------


def _train_in_subprocess(tmp_path, threads, name):
    out = tmp_path / f"{name}.h5"
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    command = [
        sys.executable, "-m", "crossbar_emu", "train", "--train-limit", "400", "--test-limit", "100",
        "--epochs", "1", "--tile-size", "200x300", "--imbalance", "0.2", "--out", str(out), "--no-progress",
    ]
    # Run outside the checkout, so that the installed package is imported, not the sources.
    completed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    with h5py.File(out, "r") as file:
        return [file[f"layers/layer_{k}/conductance"][...] for k in range(3)], file["metrics"][...]


@pytest.mark.mnist
@pytest.mark.slow
def test_results_independent_of_thread_count(tmp_path):
    one, metrics_one = _train_in_subprocess(tmp_path, 1, "one")
    two, metrics_two = _train_in_subprocess(tmp_path, 2, "two")
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(metrics_one["test_error"], metrics_two["test_error"])
    np.testing.assert_array_equal(metrics_one["pulses_up"], metrics_two["pulses_up"])


@pytest.mark.parametrize("overrides", [{}, {"device.kind": "float"}, {"update.update_management": True, "network.output_scale": [2.0]}])
def test_fused_training_matches_per_layer_path(mnist, overrides):
    config = Config().replace({"network.hidden": [24, 16], "tile.max_cols": 300, **overrides})
    fused, stepwise = CrossbarMLP(config), CrossbarMLP(config)
    order = np.random.default_rng(0).permutation(400)
    losses, correct, pulses_up, pulses_down = fused.train_samples(mnist.train_images, mnist.train_labels, order, 0, 400, 0.02, 7)
    expected_up = 0
    for position, sample in enumerate(order):
        images = mnist.train_images[sample : sample + 1].astype(np.float64)
        result = stepwise.train_batch(images, mnist.train_labels[sample : sample + 1], 0.02, 7 + position)[0]
        assert losses[position] == pytest.approx(result.loss, rel=1e-9)
        assert correct[position] == result.correct
        expected_up += result.pulses_up
    assert pulses_up.sum() == expected_up
    for a, b in zip(fused.layers, stepwise.layers):
        np.testing.assert_array_equal(a.cell_pulses_up, b.cell_pulses_up)
        np.testing.assert_array_equal(a.cell_pulses_down, b.cell_pulses_down)
        np.testing.assert_allclose(a.conductance, b.conductance, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(a.weights, a.conductance - a.reference)
