"""Command-line interface: ``crossbar-emu train``, ``calibrate``, ``traces`` and ``data fetch``."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from .config import (
    DEFAULT_CALIBRATION_AVERAGE,
    DEFAULT_CALIBRATION_PAIRS,
    DEVICE_KINDS,
    NOISE_KINDS,
    REFERENCE_LAYOUTS,
    ZERO_SHIFT_MODES,
    Config,
    ConfigError,
    load_config,
)

logger = logging.getLogger("crossbar_emu")

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# A run stopped by a signal exits with 128 + the signal number, as shells report it.
EXIT_SIGNAL_BASE = 128

# Command-line option of each configuration key, for error messages and overrides.
TRAIN_OPTIONS: dict[str, str] = {
    "device.kind": "--device",
    "device.imbalance": "--imbalance",
    "device.bound": "--bound",
    "device.dw_min": "--dw-min",
    "device.noise": "--noise",
    "device.noise_std": "--noise-std",
    "device.dw_min_dtod": "--dw-min-dtod",
    "device.bound_dtod": "--bound-dtod",
    "device.up_down_dtod": "--up-down-dtod",
    "tile.reference": "--reference",
    "tile.reference_value": "--reference-value",
    "zero_shift.mode": "--zero-shift",
    "zero_shift.calibration_pairs": "--calibration-pairs",
    "zero_shift.calibration_average": "--calibration-average",
    "zero_shift.reference_error": "--reference-error",
    "update.bit_length": "--bl",
    "update.update_management": "--update-management",
    "network.hidden": "--hidden",
    "network.init_bound": "--init-bound",
    "network.output_scale": "--output-scale",
    "training.epochs": "--epochs",
    "training.lr": "--lr",
    "training.lr_decay": "--lr-decay",
    "training.lr_decay_every": "--lr-decay-every",
    "training.batch_size": "--batch-size",
    "training.seed": "--seed",
    "training.train_limit": "--train-limit",
    "training.test_limit": "--test-limit",
    "run.data_dir": "--data-dir",
    "run.out": "--out",
    "run.overwrite": "--overwrite",
    "run.threads": "--threads",
    "trace.random_cells": "--trace-cells",
    "trace.cells": "--trace-cell",
    "trace.rows": "--trace-row",
    "trace.cols": "--trace-col",
    "trace.all_layers": "--trace-all-layer",
    "trace.every": "--trace-every",
    "trace.flush_records": "--trace-flush",
}

TRACE_SELECTION_OPTIONS = "--trace-cells, --trace-cell, --trace-row, --trace-col or --trace-all-layer"


def _int_list(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _index_entry(count: int, form: str):
    """Return an argparse type that parses ``count`` comma-separated indices >= 0."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(item) for item in text.split(",")]
        except ValueError:
            values = []
        if len(values) != count or any(value < 0 for value in values):
            raise argparse.ArgumentTypeError(f"expected {form}, {count} integers >= 0 separated by commas, got {text!r}")
        return values

    return parse


_cell_entry = _index_entry(3, "LAYER,ROW,COL")
_row_entry = _index_entry(2, "LAYER,ROW")
_col_entry = _index_entry(2, "LAYER,COL")


def _tile_size(text: str) -> tuple[int, int]:
    """Parse ``N`` (square tiles) or ``ROWSxCOLS``."""
    parts = text.lower().split("x")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or ROWSxCOLS, got {text!r}")
    return (sizes[0], sizes[-1])


def _init_bound(text: str) -> str | float:
    if text == "fan_in":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'fan_in', got {text!r}") from None


def _add_soft_bounds_options(group) -> None:
    """Add the soft-bound device options shared by ``train`` and ``calibrate``."""
    group.add_argument("--imbalance", type=float, metavar="U", help="up/down imbalance u in (-1, 1); u > 0 weakens down pulses (default 0)")
    group.add_argument("--bound", type=float, metavar="BETA", help="nominal soft bound β in weight units (default 0.6)")
    group.add_argument("--dw-min", type=float, help="nominal pulse step Δw_min in weight units (default 0.001)")
    group.add_argument("--noise", choices=NOISE_KINDS, help="form of the cycle-to-cycle noise (default multiplicative)")
    group.add_argument("--noise-std", type=float, help="cycle-to-cycle noise σ_c2c, relative (default 0.3)")
    group.add_argument("--dw-min-dtod", type=float, help="device-to-device spread of the step, relative (default 0.3)")
    group.add_argument("--bound-dtod", type=float, help="device-to-device spread of the bounds, relative (default 0.3)")
    group.add_argument("--up-down-dtod", type=float, help="device-to-device spread σ_ud of the up/down difference, relative to Δw_min (default 0.01)")


def _add_train_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the MLP on MNIST on emulated crossbars",
        description="Train the 784-256-128-10 MLP on MNIST with pulse-level crossbar emulation. "
        "Options override the values of --config; unset ones keep the defaults "
        "(see --print-config).",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file with [device], [tile], [zero_shift], [update], [network], [training], [run], [trace] tables")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration as TOML and exit")

    device = parser.add_argument_group("device")
    device.add_argument("--device", choices=DEVICE_KINDS, help="device model (default softbounds)")
    _add_soft_bounds_options(device)

    tile = parser.add_argument_group("tiles")
    tile.add_argument("--tile-size", type=_tile_size, metavar="N|ROWSxCOLS", help="largest tile in devices (default 512x512)")
    tile.add_argument("--reference", choices=REFERENCE_LAYOUTS, help="reference layout: per cell or one column per tile (default cell)")
    tile.add_argument("--reference-value", type=float, help="conductance programmed into the reference devices, weight units (default 0)")

    zero_shift = parser.add_argument_group("zero-shifting")
    zero_shift.add_argument(
        "--zero-shift",
        choices=ZERO_SHIFT_MODES,
        help="program the references to the symmetry point: off, exact (closed form) or pulsed (measured) (default off)",
    )
    zero_shift.add_argument(
        "--calibration-pairs", type=int, metavar="N",
        help=f"up/down pulse pairs per device in the pulsed measurement (default {DEFAULT_CALIBRATION_PAIRS})",
    )
    zero_shift.add_argument(
        "--calibration-average", type=int, metavar="K",
        help=f"average the read-out over the last K pairs (default {DEFAULT_CALIBRATION_AVERAGE})",
    )
    zero_shift.add_argument(
        "--reference-error", type=float, metavar="SIGMA",
        help="programming error σ_ref of each reference device, weight units (default 0)",
    )

    update = parser.add_argument_group("pulsed update")
    update.add_argument("--bl", type=int, help="bit length BL of the pulse streams, 1 to 64 (default 10)")
    update.add_argument(
        "--update-management", action=argparse.BooleanOptionalAction, default=None,
        help="balance the x and δ stream gains (default off)",
    )

    network = parser.add_argument_group("network")
    network.add_argument("--hidden", type=_int_list, metavar="N,N", help="hidden layer widths (default 256,128)")
    network.add_argument("--init-bound", type=_init_bound, help="initial weights uniform in ±BOUND weight units, or fan_in for 1/√n_in (default fan_in)")
    network.add_argument("--output-scale", type=_float_list, metavar="S[,S,S]", help="digital output scale s, one value or one per layer (default 1)")

    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, help="passes over the training set (default 30)")
    training.add_argument("--lr", type=float, help="learning rate η of the first epochs (default 0.01)")
    training.add_argument("--lr-decay", type=float, help="factor applied to η every --lr-decay-every epochs (default 0.5)")
    training.add_argument("--lr-decay-every", type=int, help="epochs between learning-rate steps (default 10)")
    training.add_argument("--batch-size", type=int, help="samples per mini-batch, updates applied one by one (default 1)")
    training.add_argument("--seed", type=int, help="seed of every random number in the run (default 0)")
    training.add_argument("--train-limit", type=int, metavar="N", help="train on the first N samples only (default all 60,000)")
    training.add_argument("--test-limit", type=int, metavar="N", help="test on the first N samples only (default all 10,000)")

    run = parser.add_argument_group("run")
    run.add_argument("--data-dir", help="MNIST directory (default $CROSSBAR_EMU_DATA, else data/mnist)")
    run.add_argument("--out", help="result file (default runs/<timestamp>.h5)")
    run.add_argument(
        "--overwrite", action=argparse.BooleanOptionalAction, default=None, help="replace an existing result file (default off)"
    )
    run.add_argument("--threads", type=int, help="Numba threads (default: every core)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    trace = parser.add_argument_group(
        "traces",
        "Record chosen devices during training into the result file (see crossbar-emu traces). "
        "Layers, rows and columns count from 0; column n_in of a layer is its bias. The forms add up; "
        "a repeated option on the command line replaces the list of the --config file.",
    )
    trace.add_argument("--trace-cells", type=int, metavar="K", help="trace K cells drawn at random from each layer, seeded from --seed (default 0)")
    trace.add_argument("--trace-cell", type=_cell_entry, action="append", metavar="L,R,C", help="trace the cell at layer L, row R, column C; repeatable")
    trace.add_argument("--trace-row", type=_row_entry, action="append", metavar="L,R", help="trace every cell of row R of layer L; repeatable")
    trace.add_argument("--trace-col", type=_col_entry, action="append", metavar="L,C", help="trace every cell of column C of layer L; repeatable")
    trace.add_argument(
        "--trace-all-layer", type=int, action="append", metavar="L",
        help="trace every cell of layer L, at most 10,000 cells; repeatable",
    )
    trace.add_argument(
        "--trace-every", type=int, metavar="N",
        help="record after every N training samples of each epoch, and at each epoch end (default 1000)",
    )
    trace.add_argument(
        "--trace-flush", type=int, metavar="M",
        help="write the records to the file every M records, at epoch ends and on stop (default 100)",
    )
    parser.set_defaults(handler=_run_train)


def _add_traces_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "traces",
        help="list, print, export or plot the device traces of a result file",
        description="Read the traced devices of a training run. Without options, list the layers, "
        "the traced cells and the time span. --cell prints a cell's series; --csv and --plot "
        "export the traced cells, or only the --cell ones.",
    )
    parser.add_argument("file", metavar="FILE", help="result file of a run trained with traced cells")
    parser.add_argument(
        "--cell", type=_cell_entry, action="append", metavar="L,R,C",
        help="a traced cell: layer L, row R, column C; repeatable. Alone, print its series",
    )
    parser.add_argument(
        "--csv", metavar="OUT",
        help="write the records to OUT ('-' for standard output) in long format, one row per cell and record: "
        "layer, row, col, step (training samples done), epoch, g, g_ref, w, n_up, n_down",
    )
    parser.add_argument(
        "--plot", metavar="OUT.png",
        help="draw the conductance against training samples, with the reference and the bounds, for the "
        "--cell cells or for up to 12 traced cells; needs matplotlib",
    )
    parser.set_defaults(handler=_run_traces)


def _add_data_parser(subparsers) -> None:
    from .mnist import DEFAULT_MIRRORS

    parser = subparsers.add_parser("data", help="manage the MNIST files")
    data_sub = parser.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    fetch = data_sub.add_parser(
        "fetch",
        help="download and verify the four MNIST files",
        description="Download the four MNIST IDX files into the data directory and verify their checksums.",
    )
    fetch.add_argument("--data-dir", help="target directory (default $CROSSBAR_EMU_DATA, else data/mnist)")
    fetch.add_argument(
        "--base-url",
        action="append",
        metavar="URL",
        help=f"mirror to download from, tried in order; repeat for several (default: {', '.join(DEFAULT_MIRRORS)})",
    )
    fetch.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a mirror (default 30)")
    fetch.set_defaults(handler=_run_data_fetch)


def _add_calibrate_parser(subparsers) -> None:
    from .zero_shift import START_STATES

    parser = subparsers.add_parser(
        "calibrate",
        help="measure symmetry points with pulse pairs and print the convergence table",
        description="Run only the pulsed symmetry-point measurement on one tile of soft-bound devices "
        "and print, for each number of up/down pairs, the error of the read-out against the closed form.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file; its [device] table sets the device")
    parser.add_argument("--tile-size", type=_tile_size, default=(256, 256), metavar="N|ROWSxCOLS", help="devices in the tile (default 256x256)")
    parser.add_argument(
        "--pairs", type=_int_list, default=[10, 30, 100, 300, 1000, 2000, 3000], metavar="N,N,...",
        help="pair counts to measure, each from the start state (default 10,30,100,300,1000,2000,3000)",
    )
    parser.add_argument("--average", type=int, default=DEFAULT_CALIBRATION_AVERAGE, metavar="K", help=f"read-out averaged over the last K pairs (default {DEFAULT_CALIBRATION_AVERAGE})")
    parser.add_argument("--start", choices=START_STATES, default="zero", help="state of the devices before the pairs (default zero)")
    _add_soft_bounds_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the device parameters and pulse noise (default 0)")
    parser.add_argument("--threads", type=int, help="Numba threads (default: every core)")
    parser.set_defaults(handler=_run_calibrate)


CALIBRATE_OPTIONS = {key: option for key, option in TRAIN_OPTIONS.items() if key.startswith("device.") and key != "device.kind"}


def _run_calibrate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import numba
    import numpy as np

    from .network import child_rng
    from .tiles import CrossbarLayer
    from .zero_shift import convergence_table

    overrides = {}
    for key, option in CALIBRATE_OPTIONS.items():
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None:
            overrides[key] = value
    rows, cols = args.tile_size
    overrides.update({"tile.max_rows": rows, "tile.max_cols": cols, "training.seed": args.seed, "run.threads": args.threads})
    try:
        config = load_config(args.config, overrides) if args.config else Config().replace(overrides)
    except ConfigError as error:
        options = dict(CALIBRATE_OPTIONS, **{"training.seed": "--seed", "run.threads": "--threads"})
        parser.exit(EXIT_USAGE, f"crossbar-emu calibrate: error: {_describe_config_error(error, options)}\n")
    if config.device.kind != "softbounds":
        parser.exit(EXIT_USAGE, f"crossbar-emu calibrate: error: device.kind = {config.device.kind!r} has no symmetry point; use softbounds\n")
    for count in args.pairs:
        if count < 1:
            parser.exit(EXIT_USAGE, f"crossbar-emu calibrate: error: invalid value for --pairs: {count}; each count must be >= 1\n")
    if args.average < 1:
        parser.exit(EXIT_USAGE, f"crossbar-emu calibrate: error: invalid value for --average: {args.average}; must be >= 1\n")
    if config.run.threads is not None:
        if config.run.threads > numba.config.NUMBA_NUM_THREADS:
            parser.exit(EXIT_USAGE, f"crossbar-emu calibrate: error: invalid value for --threads: {config.run.threads}; must be in [1, {numba.config.NUMBA_NUM_THREADS}]\n")
        numba.set_num_threads(config.run.threads)

    layer = CrossbarLayer(
        cols - 1, rows, device=config.device, tile=config.tile, update_config=config.update,
        out_scale=1.0, seed=args.seed, index=0, param_rng=child_rng(args.seed, 1, 0),
    )
    device = config.device
    time_constant = float(np.mean(device.bound / (layer.params.alpha_up + layer.params.alpha_down)))
    print(
        f"# tile {rows}x{cols}, u = {device.imbalance:g}, beta = {device.bound:g}, dw_min = {device.dw_min:g}, "
        f"noise {device.noise} {device.noise_std:g}, start {args.start}, seed {args.seed}"
    )
    print(f"# mean time constant beta / (alpha_up + alpha_down): {time_constant:.0f} pairs; errors in weight units and in dw_min")
    print(f"{'pairs':>6} {'average':>7} {'pulses':>7} {'mean|err|':>10} {'std|err|':>10} {'max|err|':>10} {'mean err':>10} {'mean/dw':>8} {'s':>6}")
    table = convergence_table(layer, args.pairs, args.average, args.start, args.seed)
    for row in table:
        print(
            f"{row['pairs']:6d} {row['average']:7d} {row['pulses_per_device']:7d} {row['mean_abs_error']:10.2e} "
            f"{row['std_abs_error']:10.2e} {row['max_abs_error']:10.2e} {row['mean_error']:10.2e} "
            f"{row['mean_abs_error'] / device.dw_min:8.2f} {row['seconds']:6.2f}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossbar-emu",
        description="Pulse-level emulation of resistive crossbar arrays training neural networks.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_parser(subparsers)
    _add_calibrate_parser(subparsers)
    _add_traces_parser(subparsers)
    _add_data_parser(subparsers)
    # Imported here because sweep_cli imports this module.
    from .sweep_cli import add_sweep_parsers

    add_sweep_parsers(subparsers, TRAIN_OPTIONS)
    return parser


def _option_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the configuration keys the command line sets."""
    overrides: dict[str, Any] = {}
    for key, option in TRAIN_OPTIONS.items():
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None:
            overrides[key] = value
    if args.tile_size is not None:
        overrides["tile.max_rows"], overrides["tile.max_cols"] = args.tile_size
    return overrides


@contextlib.contextmanager
def _stop_on_sigterm():
    """Raise KeyboardInterrupt on SIGTERM inside the block, so the run stops as on Ctrl-C.

    Yields the list of signals received. Outside the main thread, where Python cannot set
    signal handlers, SIGTERM keeps its present handling.
    """
    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _stop_requests():
    """Turn SIGINT and SIGTERM into a stop request inside the block; yield the signals received.

    The first signal only records itself, and the training loop stops at its next check,
    between two compiled calls. A KeyboardInterrupt raised at an arbitrary point could land
    in a finaliser, where Python ignores it. A second signal raises KeyboardInterrupt at
    once, for a run that does not reach a check. Outside the main thread, where Python
    cannot set signal handlers, both signals keep their present handling.
    """
    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)
        if len(received) > 1:
            raise KeyboardInterrupt(f"received {signal.Signals(signum).name} twice")
        logger.warning("received %s; stopping after the current chunk of samples", signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _describe_config_error(error: ConfigError, options: dict[str, str]) -> str:
    option = options.get(error.key)
    name = f"{option} ({error.key})" if option else error.key
    return f"invalid value for {name}: {error.value!r}; {error.rule}"


def resolve_train_config(args: argparse.Namespace) -> Config:
    """Merge defaults, the --config file and the options; raise ConfigError if invalid."""
    overrides = _option_overrides(args)
    return load_config(args.config, overrides) if args.config else Config().replace(overrides)


def _run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import numba

    try:
        config = resolve_train_config(args)
    except ConfigError as error:
        # Name the option only where the value came from the command line, not the file.
        given = {key: option for key, option in TRAIN_OPTIONS.items() if key in _option_overrides(args)}
        if args.tile_size is not None:
            given["tile.max_rows"] = given["tile.max_cols"] = "--tile-size"
        parser.exit(EXIT_USAGE, f"crossbar-emu train: error: {_describe_config_error(error, given)}\n")
    if config.run.threads is not None and config.run.threads > numba.config.NUMBA_NUM_THREADS:
        parser.exit(
            EXIT_USAGE,
            f"crossbar-emu train: error: invalid value for --threads (run.threads): {config.run.threads}; "
            f"must be in [1, {numba.config.NUMBA_NUM_THREADS}], the threads Numba started with "
            "(raise NUMBA_NUM_THREADS for more)\n",
        )
    if config.trace.active:
        from .traces import network_shapes, select_cells

        # The cell indices need the layer shapes, which the configuration alone does not check.
        try:
            select_cells(config, network_shapes(config))
        except ConfigError as error:
            given = {key: option for key, option in TRAIN_OPTIONS.items() if key in _option_overrides(args)}
            parser.exit(EXIT_USAGE, f"crossbar-emu train: error: {_describe_config_error(error, given)}\n")
    elif args.trace_every is not None or args.trace_flush is not None:
        logger.warning("--trace-every and --trace-flush have no effect without a cell selection (%s)", TRACE_SELECTION_OPTIONS)
    if args.print_config:
        sys.stdout.write(config.to_toml())
        return 0

    from .mnist import DataError, load_mnist, resolve_data_dir
    from .results import ResultExistsError, ResultFile, check_writable, default_result_path
    from .training import train_on_mnist

    out = Path(config.run.out) if config.run.out else default_result_path()
    try:
        check_writable(out, config.run.overwrite)
    except ResultExistsError as error:
        parser.exit(EXIT_USAGE, f"crossbar-emu train: error: {error}\n")

    try:
        data = load_mnist(resolve_data_dir(config.run.data_dir))
    except DataError as error:
        logger.error("%s", error)
        return EXIT_FAILURE

    with _stop_requests() as signals:
        result = ResultFile(out, overwrite=config.run.overwrite)
        logger.info("writing results to %s", out)
        try:
            summary = train_on_mnist(
                config,
                data,
                result=result,
                progress=not args.no_progress,
                stop_requested=lambda: bool(signals),
            )
        except KeyboardInterrupt:
            # train closes the file itself; this covers a stop before it started.
            result.close("interrupted")
            cause = "interrupted" if not signals or signals[0] == signal.SIGINT else signal.Signals(signals[0]).name
            logger.warning("%s; %s contains the finished epochs", cause, out)
            return EXIT_SIGNAL_BASE + signals[0] if signals else EXIT_INTERRUPTED
    final = summary.epochs[-1]
    logger.info("done: test error %.2f %% after epoch %d; results in %s", 100 * final.test_error, final.epoch, out)
    return 0


def _run_traces(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .traces import MAX_PLOT_CELLS, TraceFileError, TraceReader

    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        logger.error('--plot needs matplotlib, which is not installed; install it with: pip install "crossbar-emu[plot]"')
        return EXIT_FAILURE
    if args.cell and args.plot is not None and len(args.cell) > MAX_PLOT_CELLS:
        parser.exit(EXIT_USAGE, f"crossbar-emu traces: error: --plot draws at most {MAX_PLOT_CELLS} cells; {len(args.cell)} --cell options were given\n")
    try:
        reader = TraceReader(args.file)
    except TraceFileError as error:
        logger.error("%s", error)
        return EXIT_FAILURE

    with reader:
        try:
            return _report_traces(args, parser, reader)
        except BrokenPipeError:
            # The reader of standard output went away (``| head``). Point stdout at devnull so
            # that the flush at exit does not fail again, as the Python signal docs advise.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_FAILURE


def _report_traces(args: argparse.Namespace, parser: argparse.ArgumentParser, reader) -> int:
    """Print, export or plot the traces that ``args`` request from an open TraceReader."""
    from .traces import MAX_PLOT_CELLS, CellError

    try:
        cells = [reader.find(*entry) for entry in args.cell] if args.cell else None
    except CellError as error:
        parser.exit(EXIT_USAGE, f"crossbar-emu traces: error: invalid value for --cell: {error}\n")
    if args.csv is None and args.plot is None:
        if cells is None:
            print(reader.describe())
        else:
            print("\n\n".join(reader.format_series(cell) for cell in cells))
        sys.stdout.flush()
        return 0

    if args.csv is not None:
        try:
            if args.csv == "-":
                rows = reader.write_csv(sys.stdout, cells)
                sys.stdout.flush()
            else:
                with open(args.csv, "w", newline="", encoding="utf-8") as stream:
                    rows = reader.write_csv(stream, cells)
        except BrokenPipeError:
            raise
        except OSError as error:
            logger.error("cannot write --csv %s: %s", args.csv, error)
            return EXIT_FAILURE
        logger.info("wrote %d rows to %s", rows, args.csv)

    if args.plot is not None:
        if cells is None:
            cells = _cells_to_plot(reader.all_cells(), MAX_PLOT_CELLS)
            logger.info("drawing %d of the %d traced cells; choose the cells with --cell", len(cells), len(reader.all_cells()))
        if not cells or reader.n_records == 0:
            logger.error("%s has no trace records to draw: its run stopped before the first record", args.file)
            return EXIT_FAILURE
        try:
            reader.plot(args.plot, cells)
        except ValueError as error:
            parser.exit(EXIT_USAGE, f"crossbar-emu traces: error: invalid value for --plot: {args.plot!r}; {error}\n")
        except OSError as error:
            logger.error("cannot write --plot %s: %s", args.plot, error)
            return EXIT_FAILURE
        logger.info("wrote %s", args.plot)
    return 0


def _cells_to_plot(cells: list, limit: int) -> list:
    """Return up to ``limit`` cells, taken in turn from each layer so every layer shows."""
    by_layer: dict[int, list] = {}
    for cell in cells:
        by_layer.setdefault(cell.layer, []).append(cell)
    chosen = []
    depth = 0
    while len(chosen) < limit and any(depth < len(group) for group in by_layer.values()):
        for group in by_layer.values():
            if depth < len(group) and len(chosen) < limit:
                chosen.append(group[depth])
        depth += 1
    return sorted(chosen, key=lambda cell: (cell.layer, cell.position))


def _run_data_fetch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tqdm import tqdm

    from .mnist import DEFAULT_MIRRORS, DataError, fetch_mnist, resolve_data_dir

    if not args.timeout > 0:
        parser.exit(EXIT_USAGE, f"crossbar-emu data fetch: error: invalid value for --timeout: {args.timeout}; must be > 0\n")
    data_dir = resolve_data_dir(args.data_dir)
    bars: dict[str, tqdm] = {}

    def progress(name: str, done: int, total: int) -> None:
        bar = bars.get(name)
        if bar is None:
            bar = bars[name] = tqdm(total=total, desc=name, unit="B", unit_scale=True, leave=False)
        bar.n = done
        bar.refresh()

    try:
        paths = fetch_mnist(data_dir, base_urls=args.base_url or DEFAULT_MIRRORS, timeout=args.timeout, progress=progress)
    except DataError as error:
        logger.error("%s", error)
        return EXIT_FAILURE
    finally:
        for bar in bars.values():
            bar.close()
    logger.info("%d MNIST files verified in %s", len(paths), data_dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_parser(build_parser(), argv)


def run_parser(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv``, set up logging for a command-line run and call the chosen handler."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    with logging_redirect_tqdm():
        return args.handler(args, parser)


if __name__ == "__main__":
    sys.exit(main())
