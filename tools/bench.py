"""Benchmark crossbar-emu: update kernel against its floors, products, training, start-up, memory.

Usage: python tools/bench.py [--quick] [--data-dir DIR] [--sections LIST]

Sections (all by default, comma-separated with --sections):
  update    pulsed update per layer size (785x256, 257x128, 129x10 with the bias column),
            BL 10 and 31, dense inputs uniform in [0, 1] and sparse MNIST inputs, 1 and 2
            threads: time per update, cell-updates/s, pulses/s, ns per pulse, and the ratio
            to two floors: drawing as many Gaussian variates with the kernel's generator,
            and one pass over the arrays a dense update touches
  mvm       forward and backward products per layer: time and MAC/s
  train     end-to-end training on MNIST (one 60k epoch each, batch 1, BL 10) for the
            float and softbounds devices, 1 and 2 threads, and the same algorithm in plain
            NumPy (tools/numpy_mlp.py) on fewer samples, as the ratio baseline
  startup   JIT compilation on an empty cache, and a second `crossbar-emu train` start
            with the cache filled, each in a fresh process
  memory    peak resident memory of a training process against the bytes of its device
            state arrays plus MNIST

Timings are wall-clock medians on whatever else the machine runs; compare figures from one
run only.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from crossbar_emu import Config, CrossbarLayer, CrossbarMLP
from crossbar_emu.kernels import rng as kernel_rng
from crossbar_emu.kernels import update
from crossbar_emu.mnist import load_mnist, resolve_data_dir
from crossbar_emu.network import child_rng

sys.path.insert(0, str(Path(__file__).resolve().parent))
from numpy_mlp import NumpyMLP  # noqa: E402

LAYER_SIZES = [(784, 256), (256, 128), (128, 10)]
SECTIONS = ("update", "mvm", "train", "startup", "memory")


def median_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@numba.njit(parallel=True, cache=True)
def gaussian_floor(n_rows, per_row, seed, out):
    """Draw per_row N(0, 1) variates in each of n_rows rows with the kernel's generator."""
    for i in numba.prange(n_rows):
        key = kernel_rng.stream_key(seed, 0, kernel_rng.STREAM_PULSE_NOISE, i)
        total = 0.0
        counter = 0
        for _ in range(per_row):
            value, counter = kernel_rng.normal(key, counter)
            total += value
        out[i] = total


@numba.njit(parallel=True, cache=True)
def memory_floor(conductance, reference, alpha_up, alpha_down, b_max, b_min, weights_t):
    """Read every array a dense update reads and write the two it writes, once."""
    n_rows, n_cols = conductance.shape
    for i in numba.prange(n_rows):
        for j in range(n_cols):
            g = conductance[i, j] + 1e-30 * (alpha_up[i, j] + alpha_down[i, j] + b_max[i, j] + b_min[i, j])
            conductance[i, j] = g
            weights_t[j, i] = g - reference[i, j]


def make_layer(n_in, n_out):
    config = Config()
    return CrossbarLayer(
        n_in, n_out, device=config.device, tile=config.tile, update_config=config.update,
        out_scale=1.0, seed=0, index=0, param_rng=child_rng(0, 1, 0),
    )


def bench_update(images, repeats):
    print("\n## Pulsed update (kernel call only)")
    print(
        f"{'layer':>8} {'BL':>3} {'input':>6} {'thr':>3} {'us/update':>10} {'cell-upd/s':>11} "
        f"{'pulses':>8} {'pulses/s':>9} {'ns/pulse':>8} {'/gauss':>7} {'/memory':>7}"
    )
    generator = np.random.default_rng(1)
    for n_in, n_out in LAYER_SIZES:
        layer = make_layer(n_in, n_out)
        p = layer.params
        for bit_length in (10, 31):
            gain = np.sqrt(0.01 / (bit_length * 0.001))
            inputs = {
                "dense": generator.uniform(0.0, 1.0, n_in),
                "sparse": np.resize(images[0].astype(np.float64), n_in),
            }
            d = generator.uniform(-1.0, 1.0, n_out)
            for name, x in inputs.items():
                for threads in (1, 2):
                    numba.set_num_threads(threads)
                    counts = [np.zeros(n_out, dtype=np.int64) for _ in range(2)]
                    index = [0]

                    def run():
                        layer.program_weights(np.zeros(layer.shape))
                        index[0] += 1
                        update.pulsed_update(
                            conductance=layer.conductance, reference=layer.reference, weights_t=layer.weights_t,
                            alpha_up=p.alpha_up, alpha_down=p.alpha_down, b_max=p.b_max, b_min=p.b_min,
                            x=x, bias=1.0, d=d, scale_x=gain, scale_d=gain, bit_length=bit_length,
                            noise_std=0.3, noise_kind=0, seed=1, update_index=index[0],
                            pulses_up=counts[0], pulses_down=counts[1],
                            cell_up=layer.cell_pulses_up, cell_down=layer.cell_pulses_down,
                        )

                    run()
                    reset = median_time(lambda: layer.program_weights(np.zeros(layer.shape)), repeats)
                    seconds = max(median_time(run, repeats) - reset, 1e-9)
                    pulses = int(counts[0].sum() + counts[1].sum())

                    per_row = max(2, pulses // n_out)
                    out = np.empty(n_out)
                    gaussian_floor(n_out, per_row, 1, out)
                    gauss = median_time(lambda: gaussian_floor(n_out, per_row, 1, out), repeats)
                    memory_floor(layer.conductance, layer.reference, p.alpha_up, p.alpha_down, p.b_max, p.b_min, layer.weights_t)
                    memory = median_time(
                        lambda: memory_floor(layer.conductance, layer.reference, p.alpha_up, p.alpha_down, p.b_max, p.b_min, layer.weights_t),
                        repeats,
                    )
                    cells = n_out * (n_in + 1)
                    print(
                        f"{n_out}x{n_in + 1:<4} {bit_length:3d} {name:>6} {threads:3d} {1e6 * seconds:10.1f} "
                        f"{cells / seconds:11.3g} {pulses:8d} {pulses / seconds:9.3g} {1e9 * seconds / max(pulses, 1):8.1f} "
                        f"{seconds / gauss:7.2f} {seconds / memory:7.2f}"
                    )
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def bench_mvm(repeats):
    print("\n## Forward and backward products (per layer, one sample)")
    print(f"{'layer':>8} {'thr':>3} {'fwd us':>8} {'fwd MAC/s':>10} {'bwd us':>8} {'bwd MAC/s':>10}")
    generator = np.random.default_rng(2)
    for n_in, n_out in LAYER_SIZES:
        layer = make_layer(n_in, n_out)
        layer.program_weights(generator.uniform(-0.1, 0.1, layer.shape))
        x = generator.uniform(0, 1, n_in)
        d = generator.normal(0, 0.1, n_out)
        y = np.empty(n_out)
        z = np.empty(n_in + 1)
        layer.forward(x, y)
        layer.backward(d, z)
        macs = n_out * (n_in + 1)
        forward = median_time(lambda: layer.forward(x, y), repeats * 20)
        backward = median_time(lambda: layer.backward(d, z), repeats * 20)
        print(f"{n_out}x{n_in + 1:<4} {1:3d} {1e6 * forward:8.1f} {macs / forward:10.3g} {1e6 * backward:8.1f} {macs / backward:10.3g}")


def bench_train(data, numpy_samples):
    print("\n## Training on MNIST, batch 1, BL 10, one 60k epoch from a fresh network")
    print(f"{'device':>10} {'thr':>3} {'samples/s':>10} {'s/epoch':>8} {'pulses/sample':>14} {'vs NumPy':>9}")
    order = np.random.default_rng(0).permutation(len(data.train_images))
    numpy_rates = {}
    for device in ("float", "softbounds"):
        model = NumpyMLP([784, 256, 128, 10], pulsed=device == "softbounds")
        n = numpy_samples if device == "softbounds" else 4 * numpy_samples
        start = time.perf_counter()
        for sample in order[:n]:
            model.train_sample(data.train_images[sample].astype(np.float64), int(data.train_labels[sample]), 0.01)
        numpy_rates[device] = n / (time.perf_counter() - start)
    results = {}
    for device in ("float", "softbounds"):
        for threads in (1, 2):
            numba.set_num_threads(threads)
            net = CrossbarMLP(Config().replace({"device.kind": device}))
            net.train_samples(data.train_images, data.train_labels, order, 0, 0, 0.01, 0)
            start = time.perf_counter()
            pulses = 0
            for first in range(0, len(order), 500):
                _, _, up, down = net.train_samples(data.train_images, data.train_labels, order, first, first + 500, 0.01, first)
                pulses += int(up.sum() + down.sum())
            seconds = time.perf_counter() - start
            rate = len(order) / seconds
            results[(device, threads)] = rate
            print(
                f"{device:>10} {threads:3d} {rate:10.0f} {seconds * 60000 / len(order):8.2f} "
                f"{pulses / len(order):14.0f} {rate / numpy_rates[device]:8.0f}x"
            )
    for device, rate in numpy_rates.items():
        print(f"{'numpy ' + device:>17} {rate:10.1f} samples/s (plain NumPy, 1 process)")
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return results


def bench_startup(data_dir):
    print("\n## Start-up (fresh processes)")
    code = (
        "import time; start = time.perf_counter(); import numpy as np; "
        "from crossbar_emu import Config, CrossbarMLP; "
        "net = CrossbarMLP(Config().replace({'network.hidden': [8]})); "
        "x = np.zeros((1, 784), np.float32); y = np.zeros(1, np.int64); "
        "t = time.perf_counter(); net.train_samples(x, y, np.arange(1), 0, 1, 0.01, 0); "
        "net.evaluate(x, y); print(time.perf_counter() - t, time.perf_counter() - start)"
    )
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as work:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, CROSSBAR_EMU_DATA=str(data_dir))
        compile_seconds, total = map(float, subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split())
        print(f"JIT compilation of the training and evaluation kernels, empty cache: {compile_seconds:.1f} s (process {total:.1f} s)")
        command = [
            sys.executable, "-m", "crossbar_emu", "train", "--train-limit", "10", "--test-limit", "10", "--epochs", "1",
            "--out", "start.h5", "--overwrite", "--no-progress",
        ]
        for attempt in ("first", "second"):
            start = time.perf_counter()
            completed = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - start
            ready = re.search(r"kernels ready in ([0-9.]+) s", completed.stderr)
            print(f"{attempt} `crossbar-emu train` (10 samples): {wall:.1f} s wall, kernels ready in {float(ready.group(1)) if ready else float('nan'):.2f} s after set-up")


def bench_memory(data_dir):
    print("\n## Memory")
    code = (
        "import resource, numpy as np; from crossbar_emu import Config; from crossbar_emu.mnist import load_mnist; "
        "from crossbar_emu.training import train; "
        f"data = load_mnist({str(data_dir)!r}); config = Config().replace({{'training.epochs': 1}}); "
        "s = train(config, data.train_images[:3000], data.train_labels[:3000], data.test_images, data.test_labels); "
        "state = sum(a.nbytes for l in s.network.layers for a in (l.conductance, l.reference, l.weights_t, l.params.alpha_up, "
        "l.params.alpha_down, l.params.b_max, l.params.b_min, l.cell_pulses_up, l.cell_pulses_down)); "
        "mnist = sum(a.nbytes for a in (data.train_images, data.train_labels, data.test_images, data.test_labels)); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, state, mnist)"
    )
    rss, state, mnist = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    print(f"peak resident {rss / 2**20:.0f} MiB; device state {state / 2**20:.1f} MiB + MNIST {mnist / 2**20:.0f} MiB; ratio {rss / (state + mnist):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and NumPy samples")
    parser.add_argument("--data-dir", help="MNIST directory (default $CROSSBAR_EMU_DATA, else data/mnist)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    args = parser.parse_args()
    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; valid: {', '.join(SECTIONS)}")
    repeats = 5 if args.quick else 15
    data_dir = resolve_data_dir(args.data_dir)
    data = load_mnist(data_dir)

    print(f"# crossbar-emu benchmark: numba {numba.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, {numba.config.NUMBA_NUM_THREADS} Numba threads")
    if "update" in sections:
        bench_update(data.train_images, repeats)
    if "mvm" in sections:
        bench_mvm(repeats)
    if "train" in sections:
        bench_train(data, 100 if args.quick else 300)
    if "startup" in sections:
        bench_startup(data_dir)
    if "memory" in sections:
        bench_memory(data_dir)


if __name__ == "__main__":
    main()
