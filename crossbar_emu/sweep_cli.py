"""Command line of ``crossbar-emu sweep`` and ``crossbar-emu report``.

``add_sweep_parsers`` adds both subcommands to the parser of ``crossbar_emu.cli``. ``main``
runs them on their own, as ``python -m crossbar_emu.sweep_cli``.

The sweep takes every option of ``train`` that sets a configuration key, under the same name.
A scalar option takes a comma-separated list of values; an option whose value is itself a
list (``--hidden 256,128``) takes one value per occurrence. An option given one value is fixed
for every point, and one given several values is swept.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .cli import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_SIGNAL_BASE,
    EXIT_USAGE,
    TRAIN_OPTIONS,
    _add_train_parser,
    _describe_config_error,
    _float_list,
    _int_list,
    _stop_on_sigterm,
)
from .config import Config, ConfigError, load_config
from .sweep import SEED_KEY, SWEEP_OWNED_KEYS, Axis, Grid, SweepError, seed_axis

logger = logging.getLogger("crossbar_emu")

TILE_SIZE_OPTION = "--tile-size"
TILE_SIZE_KEYS = ("tile.max_rows", "tile.max_cols")
# Train options whose value is a list, so one occurrence is one value.
LIST_TYPES = (_int_list, _float_list)
# Run settings: the same for every point, never swept.
FIXED_ONLY_KEYS = ("run.data_dir", "run.threads")
BOOLEAN_WORDS = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}


@dataclass(frozen=True)
class SweepOption:
    """A train option as the sweep takes it.

    ``kind`` is ``scalar`` (comma-separated values), ``list`` (one value per occurrence),
    ``boolean`` (comma-separated on/off), ``fixed`` (one value for every point) or
    ``append`` (repeatable like in train, one list for every point).
    """

    option: str
    dest: str
    keys: tuple[str, ...]
    kind: str
    parse: Callable[[str], Any] | None
    choices: tuple[str, ...] | None

    def overrides(self, value: Any) -> dict[str, Any]:
        """Return the configuration keys that one value of the option sets."""
        if self.keys == TILE_SIZE_KEYS:
            return dict(zip(TILE_SIZE_KEYS, value))
        return {self.keys[0]: value}


def _train_parser() -> argparse.ArgumentParser:
    holder = argparse.ArgumentParser(add_help=False)
    subparsers = holder.add_subparsers()
    _add_train_parser(subparsers)
    return subparsers.choices["train"]


def sweep_options(train_options: dict[str, str]) -> tuple[list[SweepOption], dict[str, argparse.Action]]:
    """Return the sweep form of every train option that sets a configuration key.

    The value types and choices come from the train parser itself, so the two commands
    parse a value the same way. Also returns the train actions by option, for help texts.
    """
    actions = {action.option_strings[0]: action for action in _train_parser()._actions if action.option_strings}
    keys_of: dict[str, list[str]] = {}
    for key, option in train_options.items():
        keys_of.setdefault(option, []).append(key)
    keys_of[TILE_SIZE_OPTION] = list(TILE_SIZE_KEYS)

    options = []
    for option, keys in keys_of.items():
        action = actions.get(option)
        if action is None or set(keys) & set(SWEEP_OWNED_KEYS):
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            kind = "boolean"
        elif isinstance(action, argparse._AppendAction):
            kind = "append"
        elif set(keys) & set(FIXED_ONLY_KEYS):
            kind = "fixed"
        elif action.type in LIST_TYPES:
            kind = "list"
        else:
            kind = "scalar"
        choices = tuple(action.choices) if action.choices else None
        options.append(SweepOption(option, action.dest, tuple(keys), kind, action.type, choices))
    return options, actions


def _add_sweep_parser(subparsers, train_options: dict[str, str]) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="train every point of a grid of settings and seeds, locally or on a Dask cluster",
        description="Train one run per point of a grid: the cross product of the swept options, with "
        "seeds. Every option of train that sets a configuration key is accepted under the same name. "
        "A scalar option takes comma-separated values (--imbalance 0,0.2,0.5); an option whose value is a "
        "list takes one value per occurrence (--hidden 256,128 --hidden 64). One value is fixed for every "
        "point, several are swept. Each point writes OUT/<name>.h5, named by a hash of its configuration, "
        "and OUT/sweep.json maps the names to the settings. A rerun skips the finished points.",
    )
    parser.add_argument(
        "--grid", metavar="FILE.toml",
        help="grid file: a [fixed] table of configuration keys, a [grid] table (or [[grid]] tables) of keys "
        "to lists of values, and seeds = N or [S, S]; options override it",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration the points start from, as for train")
    parser.add_argument("--out", required=True, metavar="DIR", help="sweep directory for the result files and sweep.json")
    parser.add_argument("--seeds", type=int, metavar="N", help="run seeds 0 to N-1 for every setting; --seed S,S picks the seeds instead")
    parser.add_argument(
        "--workers", type=int, metavar="N",
        help="local worker processes running points at once (default: the usable cores divided by --threads)",
    )
    parser.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="submit the points to this Dask distributed scheduler, such as tcp://host:8786, instead of local "
        "workers; the workers must see --out and the MNIST directory at the same paths",
    )
    parser.add_argument("--dry-run", action="store_true", help="print each point's name and settings, and exit")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    options, actions = sweep_options(train_options)
    group = parser.add_argument_group(
        "training options", "The options of train. Scalar options take comma-separated values to sweep."
    )
    for spec in options:
        action = actions[spec.option]
        help_text = action.help or ""
        if spec.kind == "boolean":
            group.add_argument(
                spec.option, dest=spec.dest, action="append", nargs="?", const="on", metavar="on|off[,...]",
                help=f"{help_text}; on/off values, comma-separated, are swept",
            )
            group.add_argument(
                f"--no-{spec.option[2:]}", dest=spec.dest, action="append_const", const="off", help=f"set {spec.option} off"
            )
            continue
        metavar = action.metavar or (f"{{{','.join(spec.choices)}}}" if spec.choices else spec.dest.upper())
        if spec.kind == "scalar":
            metavar, help_text = f"{metavar}[,...]", f"{help_text}; comma-separated values are swept"
        elif spec.kind == "list":
            help_text = f"{help_text}; repeat the option to sweep several"
        elif spec.keys == ("run.threads",):
            help_text = "Numba threads of each point, the same for every point (default 1)"
        elif spec.kind == "fixed":
            help_text = f"{help_text}; the same for every point"
        else:
            help_text = f"{help_text}; the same selection for every point"
        if spec.kind == "append":
            group.add_argument(spec.option, dest=spec.dest, action="append", type=spec.parse, metavar=metavar, help=help_text)
        else:
            group.add_argument(spec.option, dest=spec.dest, action="append", metavar=metavar, help=help_text)
    parser.set_defaults(handler=_run_sweep, sweep_specs=options)


def _add_report_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="summarize a sweep: test error per setting over seeds, as CSV, Markdown and a plot",
        description="Read the result files of a sweep directory and write summary.csv, summary.md and "
        "points.csv into it: the final and best test error of each setting, with the mean, standard "
        "deviation, minimum and maximum over seeds. Also draws test_error_vs_imbalance.png (needs "
        "matplotlib). The Markdown table is printed.",
    )
    parser.add_argument("directory", metavar="SWEEP_DIR", help="directory written by crossbar-emu sweep")
    parser.add_argument("--no-plot", action="store_true", help="write the tables only")
    parser.set_defaults(handler=_run_report)


def add_sweep_parsers(subparsers, train_options: dict[str, str]) -> None:
    """Add the ``sweep`` and ``report`` subcommands; ``train_options`` maps keys to train options."""
    _add_sweep_parser(subparsers, train_options)
    _add_report_parser(subparsers)


# ---------------------------------------------------------------------------
# sweep
# ---------------------------------------------------------------------------


def _usage_error(parser: argparse.ArgumentParser, message: str) -> None:
    parser.exit(EXIT_USAGE, f"crossbar-emu sweep: error: {message}\n")


def _parse_item(spec: SweepOption, text: str, parser: argparse.ArgumentParser) -> Any:
    if spec.kind == "boolean":
        value = BOOLEAN_WORDS.get(text.strip().lower())
        if value is None:
            _usage_error(parser, f"argument {spec.option}: invalid value {text!r}; use on or off")
        return value
    if spec.choices is not None and text not in spec.choices:
        _usage_error(parser, f"argument {spec.option}: invalid choice {text!r} (choose from {', '.join(spec.choices)})")
    if spec.parse is None:
        return text
    try:
        return spec.parse(text)
    except (argparse.ArgumentTypeError, ValueError) as error:
        _usage_error(parser, f"argument {spec.option}: invalid value {text!r}: {error}")


def _option_values(spec: SweepOption, raw: list[Any], parser: argparse.ArgumentParser) -> list[Any]:
    """Return the values that the occurrences ``raw`` of an option give, in order."""
    if spec.kind == "append":
        return [raw]
    if spec.kind == "list":
        return [_parse_item(spec, text, parser) for text in raw]
    items = [item.strip() for text in raw for item in text.split(",")]
    if any(item == "" for item in items):
        _usage_error(parser, f"argument {spec.option}: empty value in {','.join(raw)!r}")
    values = [_parse_item(spec, item, parser) for item in items]
    if spec.kind == "fixed" and len(values) > 1:
        _usage_error(parser, f"argument {spec.option}: takes one value for every point, got {len(values)}")
    return values


def grid_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Grid, dict[str, str]]:
    """Return the grid that --grid and the options describe, and the option of each key set.

    Raises ConfigError for an invalid grid file. Exits with status 2 for an
    option value that does not parse.
    """
    from .sweep import load_grid_file

    fixed: dict[str, Any] = {}
    axes: list[Axis] = []
    option_of_key: dict[str, str] = {}
    for spec in args.sweep_specs:
        raw = getattr(args, spec.dest)
        if raw is None:
            continue
        values = _option_values(spec, raw, parser)
        for key in spec.keys:
            option_of_key[key] = spec.option
        if len(values) == 1:
            fixed.update(spec.overrides(values[0]))
        else:
            axes.append(Axis(spec.option, tuple(spec.overrides(value) for value in values)))

    if args.seeds is not None:
        if SEED_KEY in option_of_key:
            _usage_error(parser, "argument --seeds: --seed already chooses the seeds; give one of them")
        if args.seeds < 1:
            _usage_error(parser, f"argument --seeds: invalid value {args.seeds}; must be >= 1")
        axes.append(seed_axis(range(args.seeds)))
        option_of_key[SEED_KEY] = "--seeds"

    grid = load_grid_file(args.grid) if args.grid else Grid()
    return grid.override(fixed, axes), option_of_key


def _describe_error(error: ConfigError, option_of_key: dict[str, str], grid_file: str | None) -> str:
    text = _describe_config_error(error, option_of_key)
    if error.key not in option_of_key and grid_file is not None:
        text += f" (in --grid {grid_file})"
    return text


def _run_sweep(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .mnist import DataError
    from .sweep import build_points, run_sweep

    prog = "crossbar-emu sweep"
    option_of_key: dict[str, str] = {}
    try:
        grid, option_of_key = grid_from_args(args, parser)
        base = load_config(args.config) if args.config else Config()
        points = build_points(base, grid)
    except ConfigError as error:
        parser.exit(EXIT_USAGE, f"{prog}: error: {_describe_error(error, option_of_key, args.grid)}\n")
    if args.workers is not None and args.workers < 1:
        parser.exit(EXIT_USAGE, f"{prog}: error: invalid value for --workers: {args.workers}; must be >= 1\n")

    if args.dry_run:
        for point in points:
            settings = ", ".join(f"{key}={value!r}" for key, value in point.overrides.items())
            print(f"{point.name}  {settings}")
        print(f"{len(points)} points")
        return 0

    threads = points[0].config.run.threads or 1
    with _stop_on_sigterm() as signals:
        try:
            summary = run_sweep(
                points, args.out, keys=grid.keys, threads=threads, workers=args.workers,
                scheduler=args.scheduler, progress=not args.no_progress,
            )
        except (SweepError, DataError) as error:
            logger.error("%s", error)
            return EXIT_FAILURE
        except KeyboardInterrupt:
            logger.warning("interrupted before the points started; rerun the same command to run them")
            return EXIT_SIGNAL_BASE + signals[0] if signals else EXIT_INTERRUPTED

    print(f"sweep {args.out}: {summary.describe()}")
    for outcome in summary.failed:
        print(f"  failed {outcome.name}: {outcome.error}")
    if summary.interrupted:
        cause = signal.Signals(signals[0]).name if signals else "interrupted"
        logger.warning("%s; rerun the same command to run the %d remaining points", cause, summary.remaining)
        return EXIT_SIGNAL_BASE + signals[0] if signals else EXIT_INTERRUPTED
    if summary.failed:
        logger.error("%d points failed; rerun the same command to retry them", len(summary.failed))
        return EXIT_FAILURE
    return 0


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def _run_report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .report import PLOT_NAME, X_KEY, write_report

    directory = Path(args.directory)
    try:
        report = write_report(directory)
    except SweepError as error:
        logger.error("%s", error)
        return EXIT_FAILURE
    except OSError as error:
        logger.error("failed to write the report into %s: %s", directory, error)
        return EXIT_FAILURE
    print(report.markdown, end="")
    logger.info("wrote %s", ", ".join(str(path) for path in report.files))
    if args.no_plot:
        return 0
    if X_KEY not in report.keys:
        # The plot's x axis is the imbalance; with one imbalance it would only mislead.
        logger.info("device.imbalance takes one value in this sweep, so %s is not drawn", PLOT_NAME)
        return 0

    if importlib.util.find_spec("matplotlib") is None:
        logger.error('the plot needs matplotlib, which is not installed; install it with: pip install "crossbar-emu[plot]", or pass --no-plot')
        return EXIT_FAILURE
    from .report import plot_test_error

    path = directory / PLOT_NAME
    try:
        drawn = plot_test_error(report.groups, report.keys, path)
    except OSError as error:
        logger.error("failed to write %s: %s", path, error)
        return EXIT_FAILURE
    if not drawn:
        logger.warning("no point has completed, so %s was not drawn", path)
    else:
        logger.info("wrote %s", path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return a parser with only the ``sweep`` and ``report`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="crossbar-emu",
        description="Run sweeps of crossbar training runs and report them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_sweep_parsers(subparsers, TRAIN_OPTIONS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sweep`` or ``report`` from the arguments and return the exit status."""
    from .cli import run_parser

    return run_parser(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
