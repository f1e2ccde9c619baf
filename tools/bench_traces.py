"""Benchmark: the extra training time that device traces cost.

Usage: python tools/bench_traces.py [--samples N] [--repeats N] [--trace-cells K]
                                    [--trace-every N] [--threads N] [--data-dir DIR]

Trains the default 784-256-128-10 network for one epoch on the first N MNIST samples
(default 20,000). Every run starts from a fresh network with the same seed and writes a
result file. One kind of run records no traces, the other records K random cells per layer
every N samples (default 256 and 100). After one warm-up run of each kind, the two kinds alternate for --repeats pairs, so
that a shared machine slows both alike. Each run is timed from the call of ``train`` to its
return: the training loop, the trace records and their writing, the evaluation on 1,000
test samples and the result file. Prints every pair and the ratio of the medians, traced /
plain, the ratio of the fastest runs, and the median of the pair ratios, which a shared machine
disturbs least.

It also accounts for the trace work directly, in the same traced runs: the seconds spent
reading the traced cells, buffering and writing records and the per-epoch pulse totals, plus
the extra compiled calls that the record points split the epoch into, each costed at the
measured time of an empty call. That sum over the plain run's median time is a second
estimate of the extra time, less exposed to other load. On a shared machine, compare only
figures from one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from crossbar_emu import Config, CrossbarMLP
from crossbar_emu.mnist import load_mnist, resolve_data_dir
from crossbar_emu.results import ResultFile, TraceWriter
from crossbar_emu.traces import TracedCells
from crossbar_emu.training import train

TEST_SAMPLES = 1000


class TraceClock:
    """Sums the wall time of the trace methods while installed, by wrapping them."""

    METHODS = [
        (TracedCells, "read"),
        (TraceWriter, "append"),
        (TraceWriter, "flush"),
        (TraceWriter, "write_epoch_pulses"),
        (ResultFile, "create_traces"),
    ]

    def __init__(self):
        self.seconds = 0.0
        self.depth = 0
        self._originals = []

    def install(self) -> None:
        for cls, name in self.METHODS:
            original = getattr(cls, name)
            self._originals.append((cls, name, original))
            setattr(cls, name, self._timed(original))

    def remove(self) -> None:
        for cls, name, original in self._originals:
            setattr(cls, name, original)
        self._originals.clear()

    def _timed(self, method):
        clock = self

        def timed(*args, **kwargs):
            # append calls flush when the buffer is full: count only the outer call.
            clock.depth += 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                clock.depth -= 1
                if clock.depth == 0:
                    clock.seconds += time.perf_counter() - start

        return timed


def empty_call_seconds(config: Config, data, calls: int = 300) -> float:
    """Return the median time of a compiled training call on zero samples."""
    network = CrossbarMLP(config)
    order = np.arange(1)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        network.train_samples(data.train_images, data.train_labels, order, 0, 0, 0.01, 0)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def extra_calls(samples: int, every: int, chunk: int = 500) -> int:
    """Return the compiled calls that records add to an epoch of ``samples``."""
    plain = len(range(0, samples, chunk))
    traced = len(set(range(0, samples, chunk)) | set(range(0, samples, every)))
    return traced - plain


def timed_run(config: Config, data, out: Path) -> float:
    """Train once into a new result file at ``out`` and return the seconds ``train`` took."""
    network = CrossbarMLP(config)
    result = ResultFile(out, overwrite=True)
    start = time.perf_counter()
    train(
        config,
        data.train_images[: config.training.train_limit],
        data.train_labels[: config.training.train_limit],
        data.test_images[:TEST_SAMPLES],
        data.test_labels[:TEST_SAMPLES],
        result=result,
        network=network,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000, help="training samples per run (default 20000)")
    parser.add_argument("--repeats", type=int, default=9, help="timed pairs of runs (default 9)")
    parser.add_argument("--trace-cells", type=int, default=256, help="random cells traced per layer (default 256)")
    parser.add_argument("--trace-every", type=int, default=100, help="samples between records (default 100)")
    parser.add_argument("--threads", type=int, help="Numba threads (default: every core)")
    parser.add_argument("--data-dir", help="MNIST directory (default $CROSSBAR_EMU_DATA, else data/mnist)")
    args = parser.parse_args()

    data = load_mnist(resolve_data_dir(args.data_dir))
    plain = Config().replace({"training.epochs": 1, "training.train_limit": args.samples, "run.threads": args.threads})
    traced = plain.replace({"trace.random_cells": args.trace_cells, "trace.every": args.trace_every})

    clock = TraceClock()
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory)
        timed_run(plain, data, out / "warm-plain.h5")
        timed_run(traced, data, out / "warm-traced.h5")
        plain_times = []
        traced_times = []
        trace_work = []

        def run_traced() -> None:
            clock.seconds = 0.0
            clock.install()
            try:
                traced_times.append(timed_run(traced, data, out / "traced.h5"))
            finally:
                clock.remove()
            trace_work.append(clock.seconds)

        print(f"{args.samples} samples per run, {args.trace_cells} cells per layer every {args.trace_every} samples")
        print(f"{'pair':>4} {'plain s':>8} {'traced s':>9} {'ratio':>6} {'trace work s':>13}")
        for pair in range(args.repeats):
            # Alternate which kind runs first, so a slow spell of the machine hits both.
            if pair % 2 == 0:
                plain_times.append(timed_run(plain, data, out / "plain.h5"))
                run_traced()
            else:
                run_traced()
                plain_times.append(timed_run(plain, data, out / "plain.h5"))
            print(
                f"{pair + 1:4d} {plain_times[-1]:8.3f} {traced_times[-1]:9.3f} "
                f"{traced_times[-1] / plain_times[-1]:6.3f} {trace_work[-1]:13.4f}"
            )
        traced_size = (out / "traced.h5").stat().st_size
        plain_size = (out / "plain.h5").stat().st_size
    call_seconds = empty_call_seconds(plain, data)
    calls = extra_calls(args.samples, args.trace_every)

    plain_median = statistics.median(plain_times)
    pair_ratios = [t / p for t, p in zip(traced_times, plain_times)]
    fastest_ratio = min(traced_times) / min(plain_times)
    print(
        f"median plain {plain_median:.3f} s, traced {statistics.median(traced_times):.3f} s; "
        f"median of pair ratios {statistics.median(pair_ratios):.3f}, ratio of the fastest runs {fastest_ratio:.3f}"
    )
    accounted = statistics.median(trace_work) + calls * call_seconds
    print(
        f"accounted trace work: {statistics.median(trace_work):.3f} s in trace methods (median) + {calls} extra calls x "
        f"{1e6 * call_seconds:.0f} us = {accounted:.3f} s, {100 * accounted / plain_median:.1f} % of the plain median"
    )
    print(f"result files: plain {plain_size / 1e6:.1f} MB, traced {traced_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
