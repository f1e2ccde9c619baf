"""Benchmark: update-kernel rates per layer size and end-to-end training throughput.

Usage: python tools/bench.py [--samples N] [--repeats N] [--data-dir DIR]

Prints, for the three layers of the 784-256-128-10 network (bias column included), the
time of one pulsed update, cell-updates per second and pulses per second, on dense inputs
uniform in [0, 1]; then training samples per second on MNIST for the float and softbounds
devices, steady state, after a warm-up that compiles the kernels. Timings are wall-clock
medians; on a shared machine compare figures from the same run only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np

from crossbar_emu import Config, CrossbarLayer
from crossbar_emu.mnist import load_mnist, resolve_data_dir
from crossbar_emu.network import CrossbarMLP, child_rng

LAYER_SIZES = [(784, 256), (256, 128), (128, 10)]


def bench_update(n_in: int, n_out: int, repeats: int) -> dict:
    """Time the pulsed update of one layer on dense inputs in [0, 1] and errors in ±0.5."""
    config = Config()
    layer = CrossbarLayer(
        n_in, n_out, device=config.device, tile=config.tile, update_config=config.update,
        out_scale=1.0, seed=0, index=0, param_rng=child_rng(0, 1, 0),
    )
    generator = np.random.default_rng(1)
    x = generator.uniform(0.0, 1.0, n_in)
    d = generator.uniform(-0.5, 0.5, n_out)
    layer.update(x, d, 0.01, 0)  # compile

    times = []
    pulses = []
    for k in range(repeats):
        layer.program_weights(np.zeros(layer.shape))
        start = time.perf_counter()
        up, down = layer.update(x, d, 0.01, k + 1)
        times.append(time.perf_counter() - start)
        pulses.append(up + down)
    seconds = statistics.median(times)
    cells = n_out * (n_in + 1)
    return {
        "layer": f"{n_out}x{n_in + 1}",
        "us_per_update": 1e6 * seconds,
        "cell_updates_per_s": cells / seconds,
        "pulses_per_update": statistics.mean(pulses),
        "pulses_per_s": statistics.mean(pulses) / seconds,
    }


def bench_training(data, device: str, n_samples: int) -> dict:
    """Return steady-state training samples per second for one device kind."""
    config = Config().replace({"device.kind": device})
    net = CrossbarMLP(config)
    images = data.train_images
    labels = data.train_labels
    start = time.perf_counter()
    net.train_batch(images[:1].astype(np.float64), labels[:1], 0.01, 0)
    compile_seconds = time.perf_counter() - start

    start = time.perf_counter()
    for k in range(1, n_samples + 1):
        net.train_batch(images[k : k + 1].astype(np.float64), labels[k : k + 1], 0.01, k)
    seconds = time.perf_counter() - start
    return {
        "device": device,
        "first_sample_s": compile_seconds,
        "samples_per_s": n_samples / seconds,
        "s_per_60k_epoch": 60000 * seconds / n_samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000, help="training samples timed per device (default 5000)")
    parser.add_argument("--repeats", type=int, default=50, help="timed updates per layer (default 50)")
    parser.add_argument("--data-dir", help="MNIST directory (default $CROSSBAR_EMU_DATA, else data/mnist)")
    args = parser.parse_args()

    print(f"numba {numba.__version__}, {numba.get_num_threads()} threads")
    print("\npulsed update, dense inputs, BL 10")
    print(f"{'layer':>10} {'us/update':>10} {'cell-upd/s':>12} {'pulses/upd':>11} {'pulses/s':>10}")
    for n_in, n_out in LAYER_SIZES:
        row = bench_update(n_in, n_out, args.repeats)
        print(
            f"{row['layer']:>10} {row['us_per_update']:10.1f} {row['cell_updates_per_s']:12.3g} "
            f"{row['pulses_per_update']:11.0f} {row['pulses_per_s']:10.3g}"
        )

    data = load_mnist(resolve_data_dir(args.data_dir))
    print(f"\ntraining 784-256-128-10 on MNIST, batch 1, {args.samples} samples")
    print(f"{'device':>10} {'first (s)':>10} {'samples/s':>10} {'s/epoch':>8}")
    for device in ("float", "softbounds"):
        row = bench_training(data, device, args.samples)
        print(f"{row['device']:>10} {row['first_sample_s']:10.2f} {row['samples_per_s']:10.0f} {row['s_per_60k_epoch']:8.1f}")


if __name__ == "__main__":
    main()
