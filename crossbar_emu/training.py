"""The training loop: epochs of per-sample SGD on crossbar layers, evaluation and logging."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numba
import numpy as np
from tqdm import tqdm

from .config import Config
from .network import SEED_SAMPLE_ORDER, CrossbarMLP, child_rng
from .results import ResultFile
from .traces import (
    HEALTH_INTERVAL,
    DeviceHealth,
    TracedCells,
    chunk_bounds,
    health_postfix,
    health_summary,
    pulse_totals,
    select_cells,
)

logger = logging.getLogger(__name__)


@dataclass
class EpochMetrics:
    epoch: int
    learning_rate: float
    train_loss: float
    train_error: float
    test_loss: float
    test_error: float
    seconds: float
    samples_per_second: float
    pulses_up: int
    pulses_down: int

    def as_row(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrainingSummary:
    """Result of a finished or stopped run: the network and its epoch metrics."""

    network: CrossbarMLP
    epochs: list[EpochMetrics] = field(default_factory=list)
    compile_seconds: float = 0.0
    status: str = "completed"


def set_threads(threads: int | None) -> int:
    """Set the Numba thread count (all cores if None) and return it."""
    if threads is None:
        threads = numba.config.NUMBA_NUM_THREADS
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(
            f"--threads {threads} exceeds the {numba.config.NUMBA_NUM_THREADS} threads Numba "
            "was started with; lower it or set NUMBA_NUM_THREADS"
        )
    numba.set_num_threads(threads)
    return threads


def train(
    config: Config,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    result: ResultFile | None = None,
    progress: bool = False,
    network: CrossbarMLP | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> TrainingSummary:
    """Train the network for ``config.training.epochs`` and evaluate after each epoch.

    ``train_images`` rows are inputs in [0, 1]. Each epoch is written to ``result`` as soon
    as it ends. With cells selected in ``config.trace``, their state is recorded into
    ``result`` between the compiled training calls. A KeyboardInterrupt stops the run after
    closing the result file with status ``interrupted``; the finished epochs and every trace
    record taken stay in it. This function installs no signal handlers: a caller that
    handles signals itself passes ``stop_requested``, which is polled after every compiled
    call (at most 500 samples), and the run then stops as on a KeyboardInterrupt.
    """
    training = config.training
    trace = config.trace
    threads = set_threads(config.run.threads)
    traced: TracedCells | None = None
    try:
        network = network or CrossbarMLP(config, n_inputs=train_images.shape[1])
        if trace.active:
            selections = select_cells(config, [layer.shape for layer in network.layers])
            if result is None:
                logger.warning("cells are selected for tracing, but there is no result file to record them in")
        if result is not None:
            result.write_header(config.to_json(), training.seed, threads)
            result.write_layers(network.layers, network.calibrations, config.zero_shift)
            if trace.active:
                result.create_traces(
                    selections, network.layers, every=trace.every, flush_records=trace.flush_records, random_cells=trace.random_cells
                )
                traced = TracedCells(selections, network.layers)
                logger.info(
                    "tracing %s cells of layers %s every %d samples",
                    "/".join(str(len(rows)) for rows, _ in selections),
                    "/".join(str(layer.index) for layer in network.layers),
                    trace.every,
                )
    except BaseException:
        if result is not None:
            result.close("failed")
        raise
    summary = TrainingSummary(network=network)

    n_train = len(train_images)
    batch = training.batch_size
    # Samples per compiled call: a multiple of the batch, small enough for a lively
    # progress bar and a prompt reaction to Ctrl-C. Tracing adds a call boundary at every
    # record, which select_cells keeps on a batch boundary.
    chunk = batch * max(1, 500 // batch)
    health = DeviceHealth(network.layers)
    logger.info(
        "training %s on %s devices, %d train and %d test samples, %d epochs, seed %d, %d threads",
        "-".join(str(layer.n_in) for layer in network.layers) + f"-{network.layers[-1].n_out}",
        config.device.kind,
        n_train,
        len(test_images),
        training.epochs,
        training.seed,
        threads,
    )

    update_index = 0
    try:
        # Compile (or load from the cache) the kernels on zero samples, so that the epoch
        # times are steady state. The mini-batch path compiles during its first batch.
        compile_start = time.perf_counter()
        network.train_samples(train_images, train_labels, np.arange(1), 0, 0, training.lr, 0)
        network.evaluate(test_images[:1], test_labels[:1])
        summary.compile_seconds = time.perf_counter() - compile_start
        logger.info("kernels ready in %.2f s (JIT compilation or cache load)", summary.compile_seconds)
        if traced is not None:
            result.traces.append(0, 0, traced.read(network.layers))

        for epoch in range(1, training.epochs + 1):
            learning_rate = training.learning_rate(epoch)
            if training.shuffle:
                order = child_rng(training.seed, SEED_SAMPLE_ORDER, epoch).permutation(n_train)
            else:
                order = np.arange(n_train)

            loss_sum = 0.0
            wrong = 0
            pulses_up = 0
            pulses_down = 0
            epoch_start_pulses = pulse_totals(network.layers)
            health_pulses = epoch_start_pulses
            health_sample = 0
            health_fields: dict[str, str] = {}
            bounds = chunk_bounds(n_train, chunk, trace.every if traced is not None else None)
            start = time.perf_counter()
            bar = tqdm(total=n_train, desc=f"epoch {epoch}/{training.epochs}", unit="sample", disable=not progress, leave=False)
            for first, last in zip(bounds[:-1], bounds[1:]):
                if batch == 1:
                    losses, correct, up, down = network.train_samples(
                        train_images, train_labels, order, first, last, learning_rate, update_index
                    )
                    loss_sum += float(losses.sum())
                    wrong += int(np.count_nonzero(~correct))
                    pulses_up += int(up.sum())
                    pulses_down += int(down.sum())
                else:
                    for batch_first in range(first, last, batch):
                        indices = order[batch_first : min(batch_first + batch, last)]
                        images = np.asarray(train_images[indices], dtype=np.float64)
                        for sample in network.train_batch(images, train_labels[indices], learning_rate, update_index + batch_first - first):
                            loss_sum += sample.loss
                            wrong += not sample.correct
                            pulses_up += sample.pulses_up
                            pulses_down += sample.pulses_down
                update_index += last - first
                if traced is not None and (last % trace.every == 0 or last == n_train):
                    result.traces.append(update_index, epoch, traced.read(network.layers))
                bar.update(last - first)
                if stop_requested is not None and stop_requested():
                    # A signal handler only sets a flag; the run stops here, between two
                    # compiled calls, where nothing is half-written.
                    raise KeyboardInterrupt("stop requested")
                if progress:
                    if last - health_sample >= HEALTH_INTERVAL:
                        totals = pulse_totals(network.layers)
                        rates = (totals - health_pulses) / (last - health_sample)
                        health_fields = health_postfix(health.near_bound(network.layers), rates)
                        health_pulses = totals
                        health_sample = last
                    bar.set_postfix({"loss": f"{loss_sum / last:.3f}", "err": f"{wrong / last:.3f}", **health_fields})
            bar.close()
            seconds = time.perf_counter() - start
            epoch_rates = (pulse_totals(network.layers) - epoch_start_pulses) / n_train

            test_loss, test_error = network.evaluate(test_images, test_labels)
            metrics = EpochMetrics(
                epoch=epoch,
                learning_rate=learning_rate,
                train_loss=loss_sum / n_train,
                train_error=wrong / n_train,
                test_loss=test_loss,
                test_error=test_error,
                seconds=seconds,
                samples_per_second=n_train / seconds,
                pulses_up=pulses_up,
                pulses_down=pulses_down,
            )
            summary.epochs.append(metrics)
            logger.info(
                "epoch %d: train loss %.4f, train error %.2f %%, test error %.2f %%, %.1f s, %.0f samples/s, %d pulses",
                epoch,
                metrics.train_loss,
                100 * metrics.train_error,
                100 * metrics.test_error,
                seconds,
                metrics.samples_per_second,
                pulses_up + pulses_down,
            )
            logger.info("epoch %d devices: %s", epoch, health_summary(health.near_bound(network.layers), epoch_rates))
            if result is not None:
                result.append_epoch(metrics.as_row(), network.layers)
    except KeyboardInterrupt:
        summary.status = "interrupted"
        logger.warning(
            "interrupted during epoch %d; the finished epochs%s are saved",
            len(summary.epochs) + 1,
            " and the trace records taken" if traced is not None else "",
        )
        if result is not None:
            result.close("interrupted")
        raise
    except BaseException:
        summary.status = "failed"
        if result is not None:
            result.close("failed")
        raise
    if result is not None:
        result.close("completed")
    return summary


def train_on_mnist(config: Config, data, **options) -> TrainingSummary:
    """Train on MNIST arrays (a ``MnistData``), cut to training.train_limit and test_limit.

    ``options`` pass on to ``train``.
    """
    train_limit = config.training.train_limit or len(data.train_images)
    test_limit = config.training.test_limit or len(data.test_images)
    return train(
        config,
        data.train_images[:train_limit],
        data.train_labels[:train_limit],
        data.test_images[:test_limit],
        data.test_labels[:test_limit],
        **options,
    )
