"""Parameter sweeps: grids of training runs, their names, and their execution.

A grid is a set of fixed configuration overrides and one or more tables of axes. Each table
is a cross product of its axes, and the grid is the union of its tables. Every point is one
training run that writes ``<name>.h5`` into the sweep directory, where the name is a hash of
the point's resolved configuration. ``sweep.json`` in the same directory maps each name to
the overrides and the configuration of its point.

A run writes a partial file and renames it to its final name only once it has completed
every epoch, so a finished file is never half-written. Rerunning a sweep skips the points
whose file is finished, and runs the others again.

Points run in local worker processes or on an existing Dask distributed scheduler. Each
worker loads MNIST itself, once per process, from a path that the caller resolves, so Dask
workers must see the data directory and the sweep directory at the same paths as the client.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import traceback
import types
import typing
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, config_from_dict, read_toml

logger = logging.getLogger(__name__)

# Section name to dataclass, such as "device" to DeviceConfig.
SECTIONS: dict[str, type] = typing.get_type_hints(Config)

MANIFEST_NAME = "sweep.json"
MANIFEST_FORMAT = "crossbar-emu sweep"
MANIFEST_VERSION = 1
LOCK_NAME = ".sweep.lock"
NAME_LENGTH = 12
RESULT_SUFFIX = ".h5"
# A run in progress writes <name>.h5.part-<host>-<pid>; the glob finds the files that runs
# stopped by a kill left behind.
PARTIAL_MARKER = ".h5.part-"

# Keys that choose where a run reads and writes and how many threads it uses. They never
# change the results, so they are left out of the point names and cannot be swept.
RUN_ONLY_KEYS = ("run.data_dir", "run.out", "run.overwrite", "run.threads")
# Keys that the sweep sets for each point itself.
SWEEP_OWNED_KEYS = ("run.out", "run.overwrite")
SEED_KEY = "training.seed"

# How often a local worker checks that the sweep process that started it still runs.
PARENT_CHECK_SECONDS = 0.5
DASK_CONNECT_TIMEOUT_SECONDS = 30

DISTRIBUTED_MISSING = (
    "--scheduler needs dask.distributed, which is not installed; "
    'install it with: pip install "crossbar-emu[distributed]"'
)


class SweepError(Exception):
    """A sweep that cannot start or go on. The message is a complete sentence for the user."""


# ---------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One swept setting: each value is the set of configuration overrides it applies.

    Most axes set a single key. ``--tile-size`` sets tile.max_rows and tile.max_cols at once.
    """

    label: str
    values: tuple[dict[str, Any], ...]

    @property
    def keys(self) -> tuple[str, ...]:
        """The dotted configuration keys that the axis sets, in order of appearance."""
        keys: dict[str, None] = {}
        for value in self.values:
            keys.update(dict.fromkeys(value))
        return tuple(keys)


def key_axis(key: str, values: Iterable[Any]) -> Axis:
    """Return the axis that sets ``key`` to each of ``values``."""
    return Axis(key, tuple({key: value} for value in values))


def seed_axis(seeds: Iterable[int]) -> Axis:
    """Return the axis over ``training.seed``."""
    return key_axis(SEED_KEY, seeds)


@dataclass
class Grid:
    """Fixed overrides and the tables of axes whose cross products make up the points."""

    fixed: dict[str, Any] = field(default_factory=dict)
    tables: list[list[Axis]] = field(default_factory=lambda: [[]])

    def override(self, fixed: dict[str, Any], axes: list[Axis]) -> Grid:
        """Return a grid where ``fixed`` and ``axes`` replace every setting of the same keys.

        The new axes are crossed with every table. Setting ``training.seed`` in either
        replaces the grid's seeds.
        """
        replaced = set(fixed)
        for axis in axes:
            replaced.update(axis.keys)
        kept_fixed = {key: value for key, value in self.fixed.items() if key not in replaced}
        tables = []
        for table in self.tables:
            kept = [axis for axis in table if not replaced.intersection(axis.keys)]
            tables.append(_seed_axes_last(kept + axes))
        return Grid({**kept_fixed, **fixed}, tables)

    @property
    def keys(self) -> list[str]:
        """The swept keys, in the order of the tables and their axes, with the seed last."""
        keys: dict[str, None] = {}
        for table in self.tables:
            for axis in table:
                keys.update(dict.fromkeys(axis.keys))
        return [key for key in keys if key != SEED_KEY] + [key for key in keys if key == SEED_KEY]

    def expand(self) -> list[dict[str, Any]]:
        """Return the overrides of every point: each table's cross product, table by table.

        The last axis of a table varies fastest. Duplicates are kept; build_points merges
        points that resolve to the same configuration.
        """
        points = []
        for table in self.tables:
            for combination in itertools.product(*(axis.values for axis in table)):
                overrides = dict(self.fixed)
                for value in combination:
                    overrides.update(value)
                points.append(overrides)
        return points


def _seed_axes_last(axes: list[Axis]) -> list[Axis]:
    """Move the seed axis to the end, so the seeds of a setting are neighbours."""
    return [axis for axis in axes if axis.keys != (SEED_KEY,)] + [axis for axis in axes if axis.keys == (SEED_KEY,)]


def flatten_keys(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return a TOML table as dotted keys: ``{"device": {"bound": 1}}`` gives ``device.bound``.

    TOML reads an unquoted dotted key as nested tables and a quoted one as a single key, so
    both spellings arrive here. No configuration value is a table.
    """
    flat = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_keys(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def check_key(key: str, value: Any, *, swept: bool) -> None:
    """Raise ConfigError unless ``key`` is a configuration key that a sweep may set."""
    section, _, name = key.partition(".")
    cls = SECTIONS.get(section)
    names = [item.name for item in dataclasses.fields(cls)] if cls is not None else []
    if name not in names:
        valid = f"; valid keys of [{section}]: {', '.join(sorted(names))}" if names else f"; valid sections: {', '.join(SECTIONS)}"
        raise ConfigError(key, value, f"unknown configuration key{valid}")
    if key in SWEEP_OWNED_KEYS:
        raise ConfigError(key, value, "is set by the sweep for each point; remove it")
    if swept and section == "run":
        raise ConfigError(key, value, "run settings are the same for every point; set it once, not as a list")


def parse_seeds(value: Any, key: str = "seeds") -> list[int]:
    """Return the seeds that a count N (seeds 0 to N-1) or a list of seeds stands for."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(key, value, "must be a count >= 1 (seeds 0 to N-1) or a list of seeds")
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(seed, int) and not isinstance(seed, bool) for seed in value):
        return value
    raise ConfigError(key, value, "must be a count >= 1 (seeds 0 to N-1) or a non-empty list of integer seeds")


def load_grid_file(path: str | Path) -> Grid:
    """Read a grid from TOML: ``[fixed]`` overrides, ``[grid]`` lists of values, and ``seeds``.

    ``[grid]`` may also be an array of tables (``[[grid]]``); the grid is then the union of
    their cross products, and ``[fixed]`` and ``seeds`` apply to each. Keys are dotted
    configuration keys, quoted or written as nested tables. Raises ConfigError naming the key
    for an unknown key, a value that is not a list of values, or a conflicting setting.
    """
    data = read_toml(path, "--grid")

    for key in data:
        if key not in ("fixed", "grid", "seeds"):
            raise ConfigError(key, data[key], "unknown entry of the grid file; valid entries: [fixed], [grid] or [[grid]], seeds")
    fixed_table = data.get("fixed", {})
    if not isinstance(fixed_table, dict):
        raise ConfigError("fixed", fixed_table, "must be a table of configuration keys")
    fixed = flatten_keys(fixed_table)
    for key, value in fixed.items():
        check_key(key, value, swept=False)

    grid_tables = data.get("grid", {})
    if isinstance(grid_tables, dict):
        grid_tables = [grid_tables]
    if not isinstance(grid_tables, list) or not all(isinstance(table, dict) for table in grid_tables):
        raise ConfigError("grid", data.get("grid"), "must be a table [grid] or an array of tables [[grid]]")

    tables = []
    for table in grid_tables:
        axes = []
        for key, values in flatten_keys(table).items():
            check_key(key, values, swept=True)
            if not isinstance(values, list) or not values:
                raise ConfigError(key, values, "a [grid] entry must be a non-empty list of values, such as [0, 0.2]")
            if key in fixed:
                raise ConfigError(key, values, "is set in both [fixed] and [grid]; keep one")
            axes.append(key_axis(key, values))
        tables.append(axes)

    if "seeds" in data:
        seeds = parse_seeds(data["seeds"])
        if SEED_KEY in fixed or any(SEED_KEY in axis.keys for table in tables for axis in table):
            raise ConfigError("seeds", data["seeds"], f"conflicts with {SEED_KEY} in [fixed] or [grid]; keep one")
        tables = [table + [seed_axis(seeds)] for table in tables]
    return Grid(fixed, [_seed_axes_last(table) for table in tables])


# ---------------------------------------------------------------------------
# Points and their names
# ---------------------------------------------------------------------------


def _float_field(hint: Any, value: Any) -> Any:
    """Return ``value`` with integers turned into floats where the field ``hint`` takes floats."""
    if isinstance(value, bool):
        return value
    if hint is float:
        return float(value) if isinstance(value, int) else value
    origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return float(value) if float in arguments and isinstance(value, int) else value
    if origin is tuple and arguments[:1] == (float,) and isinstance(value, (list, tuple)):
        return [_float_field(float, item) for item in value]
    return value


def canonical_config(config: Config) -> Config:
    """Return ``config`` with every number of a float field stored as a float.

    TOML and the command line may give 0 or 0.0 for the same setting, and the JSON of the
    configuration, so the point's name, must not depend on which.
    """
    data = config.to_dict()
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        values = data[section]
        for name in values:
            values[name] = _float_field(hints[name], values[name])
    return config_from_dict(data)


def hashed_config(config: Config | dict[str, Any]) -> dict[str, Any]:
    """Return the configuration as nested dicts without the keys of RUN_ONLY_KEYS."""
    data = config.to_dict() if isinstance(config, Config) else json.loads(json.dumps(config))
    for key in RUN_ONLY_KEYS:
        section, _, name = key.partition(".")
        data.get(section, {}).pop(name, None)
    return {section: values for section, values in data.items() if values}


def point_name(config: Config) -> str:
    """Return the first 12 hex digits of the SHA-256 of the configuration's sorted-key JSON.

    The JSON leaves out RUN_ONLY_KEYS. Pass a configuration from canonical_config, so that
    an integer and a float of the same value give the same name.
    """
    text = json.dumps(hashed_config(config), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:NAME_LENGTH]


@dataclass(frozen=True)
class Point:
    """One training run of a sweep."""

    name: str
    overrides: dict[str, Any]
    config: Config


def check_trace_selection(config: Config) -> None:
    """Raise ConfigError if the configuration traces cells outside its network."""
    if not config.trace.active:
        return
    from .traces import network_shapes, select_cells

    select_cells(config, network_shapes(config))


def build_points(base: Config, grid: Grid) -> list[Point]:
    """Resolve and validate every point of ``grid`` on top of ``base``, before any run.

    Raises ConfigError, naming the key and the value, for the first invalid point. Points
    that resolve to the same configuration run once, under the overrides listed first.
    """
    points: dict[str, Point] = {}
    repeats = 0
    for overrides in grid.expand():
        for key, value in overrides.items():
            check_key(key, value, swept=False)
        config = canonical_config(base.replace(overrides))
        check_trace_selection(config)
        name = point_name(config)
        if name in points:
            repeats += 1
            continue
        points[name] = Point(name, overrides, config)
    if repeats:
        logger.warning("%d grid points repeat the configuration of an earlier point and run once", repeats)
    return list(points.values())


# ---------------------------------------------------------------------------
# The sweep directory
# ---------------------------------------------------------------------------


def result_path(directory: Path, name: str) -> Path:
    return directory / f"{name}{RESULT_SUFFIX}"


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Return the parsed ``sweep.json`` of ``directory``; raise SweepError if it is unusable."""
    path = Path(directory) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"{path} not found; is {directory} a directory written by crossbar-emu sweep?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SweepError(f"failed to read {path}: {error}; move it away to start a new sweep in {directory}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("points"), dict):
        raise SweepError(f"{path} is not a crossbar-emu sweep manifest; move it away or use another directory")
    if manifest.get("version") != MANIFEST_VERSION:
        raise SweepError(f"{path} has manifest version {manifest.get('version')!r}; this crossbar-emu reads version {MANIFEST_VERSION}")
    return manifest


def write_manifest(directory: Path, points: list[Point], keys: list[str]) -> None:
    """Add the points and swept keys to ``sweep.json``, keeping the entries already there.

    The file is replaced atomically, so a reader never sees it half-written.
    """
    path = directory / MANIFEST_NAME
    if path.exists():
        manifest = read_manifest(directory)
    else:
        manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "keys": [], "points": {}}
    manifest["keys"] = list(dict.fromkeys([*manifest.get("keys", []), *keys]))
    for point in points:
        manifest["points"][point.name] = {"overrides": point.overrides, "config": hashed_config(point.config)}
    temporary = path.with_name(f"{MANIFEST_NAME}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def is_finished(path: Path, config: Config) -> bool:
    """Return whether ``path`` contains a completed run of ``config`` with all its epochs."""
    import h5py

    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as file:
            status = file.attrs.get("status")
            epochs = int(file.attrs.get("epochs_completed", -1))
            rows = file["metrics"].shape[0] if "metrics" in file else -1
            stored = json.loads(file.attrs["config"]) if "config" in file.attrs else None
    except (OSError, KeyError, ValueError, TypeError) as error:
        logger.warning("failed to read %s, so its point runs again: %s", path, error)
        return False
    expected = config.training.epochs
    if status != "completed" or epochs != expected or rows != expected:
        return False
    return stored is not None and hashed_config(stored) == hashed_config(config)


@dataclass
class DirectoryLock:
    """An exclusive flock on the sweep directory's lock file, held while a sweep runs there."""

    path: Path
    _stream: Any = None

    def acquire(self) -> None:
        stream = self.path.open("a")
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.close()
            raise SweepError(
                f"another sweep is running in {self.path.parent} (it has locked {self.path}); "
                "wait for it to end or choose another --out"
            ) from None
        self._stream = stream

    def release(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def remove_partial_files(directory: Path) -> int:
    """Delete the partial result files that stopped runs left behind; return how many.

    Call this only while holding the directory lock, so no run of this sweep writes them.
    """
    removed = 0
    for path in directory.glob(f"*{PARTIAL_MARKER}*"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


# ---------------------------------------------------------------------------
# One point, in a worker
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PointTask:
    """The input of one point's run in a worker: the configuration as JSON and absolute paths."""

    name: str
    config_json: str
    directory: str
    data_dir: str


@dataclass(frozen=True)
class PointOutcome:
    """The result of one point, sent back from the worker."""

    name: str
    ok: bool
    seconds: float
    final_test_error: float | None = None
    epochs: int = 0
    error: str | None = None
    traceback: str | None = None
    worker: str = ""


_mnist_cache: dict[str, Any] = {}
_mnist_lock = threading.Lock()


def _cached_mnist(data_dir: str):
    """Return MNIST from ``data_dir``, loaded once per process (a Dask worker runs several points)."""
    from .mnist import load_mnist

    with _mnist_lock:
        data = _mnist_cache.get(data_dir)
        if data is None:
            data = _mnist_cache[data_dir] = load_mnist(data_dir)
        return data


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def run_point(task: PointTask) -> PointOutcome:
    """Train one point into a partial file, then rename it to ``<name>.h5``.

    Runs in a worker process. Exceptions are returned as a failed outcome with the
    traceback, and the partial file is deleted. A KeyboardInterrupt is not caught.
    """
    from .results import ResultFile
    from .training import train_on_mnist

    start = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    directory = Path(task.directory)
    partial = directory / f"{task.name}{PARTIAL_MARKER}{socket.gethostname()}-{os.getpid()}"
    try:
        config = config_from_dict(json.loads(task.config_json))
        data = _cached_mnist(task.data_dir)
        result = ResultFile(partial, overwrite=True)
        summary = train_on_mnist(config, data, result=result)
        _fsync(partial)
        os.replace(partial, result_path(directory, task.name))
    except Exception as error:
        partial.unlink(missing_ok=True)
        return PointOutcome(
            task.name, False, time.perf_counter() - start, error=f"{type(error).__name__}: {error}",
            traceback=traceback.format_exc(), worker=worker,
        )
    final = summary.epochs[-1]
    return PointOutcome(
        task.name, True, time.perf_counter() - start, final_test_error=final.test_error, epochs=final.epoch, worker=worker
    )


# ---------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------


def _exit_with_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_SECONDS)
        if os.getppid() != parent_pid:
            # The sweep process died without stopping its workers (SIGKILL). Its partial
            # file stays behind, and the next sweep in the directory deletes it.
            os._exit(1)


def _init_local_worker(parent_pid: int) -> None:
    """Prepare a local worker: Ctrl-C is left to the sweep process, which stops the workers,
    and the worker exits within PARENT_CHECK_SECONDS once that process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()


def _stop_local_workers(executor: ProcessPoolExecutor) -> None:
    terminate = getattr(executor, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    # NOTE: before Python 3.14, ProcessPoolExecutor has no public way to stop running
    # workers, so this reads its private map of worker processes, which shutdown clears.
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)


def run_local(tasks: list[PointTask], workers: int, on_outcome: Callable[[PointOutcome], None]) -> None:
    """Run the tasks in ``workers`` spawned processes; call ``on_outcome`` as each ends.

    On any exception, KeyboardInterrupt included, the workers are terminated and the
    exception propagates.
    NOTE: a worker that dies (killed, or out of memory) breaks the whole pool. Every point
    not yet finished is then reported as failed, and a rerun of the sweep runs them.
    """
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_local_worker, initargs=(os.getpid(),)
    )
    try:
        futures = {executor.submit(run_point, task): task for task in tasks}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except Exception as error:
                outcome = PointOutcome(futures[future].name, False, 0.0, error=f"{type(error).__name__}: {error}")
            on_outcome(outcome)
    except BaseException:
        _stop_local_workers(executor)
        raise
    executor.shutdown()


def import_distributed() -> types.ModuleType:
    """Return the dask.distributed module; raise SweepError naming the extra that installs it."""
    try:
        import dask.distributed
    except ImportError:
        raise SweepError(DISTRIBUTED_MISSING) from None
    return dask.distributed


def run_dask(tasks: list[PointTask], address: str, on_outcome: Callable[[PointOutcome], None]) -> None:
    """Submit the tasks to the Dask scheduler at ``address``; call ``on_outcome`` as each ends.

    On any exception, KeyboardInterrupt included, the points not yet finished are cancelled.
    Dask lets a task that has started run to its end.
    """
    distributed = import_distributed()
    try:
        client = distributed.Client(address, timeout=DASK_CONNECT_TIMEOUT_SECONDS, set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise SweepError(f"failed to connect to the Dask scheduler at {address}: {error}; check the address") from None
    futures = {}
    try:
        batch = uuid.uuid4().hex[:8]
        for task in tasks:
            future = client.submit(run_point, task, key=f"crossbar-emu-point-{task.name}-{batch}", pure=False)
            futures[future] = task
        for future in distributed.as_completed(list(futures), loop=client.loop):
            try:
                outcome = future.result()
            except Exception as error:
                outcome = PointOutcome(futures[future].name, False, 0.0, error=f"{type(error).__name__}: {error}")
            on_outcome(outcome)
    except BaseException:
        client.cancel(list(futures))
        raise
    finally:
        client.close()


# ---------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------


@dataclass
class SweepSummary:
    """Counts of a sweep's points, and the failures with their errors."""

    total: int
    skipped: int = 0
    done: int = 0
    failed: list[PointOutcome] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def remaining(self) -> int:
        return self.total - self.skipped - self.done - len(self.failed)

    def describe(self) -> str:
        text = f"{self.total} points: {self.done} done, {self.skipped} skipped, {len(self.failed)} failed"
        if self.remaining:
            text += f", {self.remaining} not run"
        return f"{text} ({self.seconds:.0f} s)"


def _describe_overrides(overrides: dict[str, Any], keys: list[str]) -> str:
    """Return the swept settings of a point as ``key=value`` pairs, or all of them without ``keys``."""
    shown = [key for key in overrides if key in keys] if keys else list(overrides)
    return ", ".join(f"{key}={overrides[key]!r}" for key in shown)


def check_data_dir(data_dir: Path) -> None:
    """Raise DataError unless the four MNIST files in ``data_dir`` pass their checksums."""
    from .mnist import MNIST_FILES, verify_file

    for record in MNIST_FILES:
        verify_file(data_dir / record.name, record)


def run_sweep(
    points: list[Point],
    directory: str | Path,
    *,
    keys: list[str] | None = None,
    threads: int = 1,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
) -> SweepSummary:
    """Run every point not yet finished in ``directory``, locally or on a Dask scheduler.

    ``threads`` Numba threads run each point. ``workers`` local processes run at once
    (default: the usable cores divided by ``threads``), unless ``scheduler`` names a Dask
    scheduler address. ``keys`` are the swept keys, recorded in the manifest and shown in
    the log. A failed point is logged and counted, and the others go on. Raises SweepError
    if the directory is in use or unusable, and DataError if points remain to run and the
    MNIST files are missing. On KeyboardInterrupt the workers are stopped and the summary
    comes back with ``interrupted`` set.
    """
    from .mnist import resolve_data_dir

    start = time.perf_counter()
    keys = keys or []
    directory = Path(directory).absolute()
    summary = SweepSummary(total=len(points))
    if not points:
        return summary
    if directory.exists() and not directory.is_dir():
        raise SweepError(f"sweep directory {directory} is a file; choose a directory with --out")
    if scheduler is not None:
        import_distributed()
    data_dir = resolve_data_dir(points[0].config.run.data_dir).absolute()
    if not all(is_finished(result_path(directory, point.name), point.config) for point in points):
        check_data_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)

    lock = DirectoryLock(directory / LOCK_NAME)
    lock.acquire()
    try:
        removed = remove_partial_files(directory)
        if removed:
            logger.info("deleted %d partial result files of stopped runs", removed)
        write_manifest(directory, points, keys)
        tasks = []
        for point in points:
            if is_finished(result_path(directory, point.name), point.config):
                summary.skipped += 1
                continue
            config = point.config.replace(
                {"run.out": str(result_path(directory, point.name)), "run.threads": threads, "run.data_dir": str(data_dir)}
            )
            tasks.append(PointTask(point.name, config.to_json(), str(directory), str(data_dir)))

        if scheduler is None:
            workers = min(workers or max(1, _usable_cores() // threads), max(1, len(tasks)))
            where = f"{workers} local worker process{'es' if workers > 1 else ''}"
        else:
            where = f"the Dask scheduler at {scheduler}"
        logger.info(
            "sweep in %s: %d points, %d finished before, %d to run on %s with %d thread(s) each",
            directory, len(points), summary.skipped, len(tasks), where, threads,
        )
        with _OutcomeLog(summary, {point.name: point for point in points}, keys, progress) as record:
            try:
                if tasks and scheduler is None:
                    run_local(tasks, workers, record)
                elif tasks:
                    run_dask(tasks, scheduler, record)
            except KeyboardInterrupt:
                summary.interrupted = True
    finally:
        lock.release()
    summary.seconds = time.perf_counter() - start
    return summary


class _OutcomeLog:
    """Counts each outcome into the summary, logs it and advances the progress bar."""

    def __init__(self, summary: SweepSummary, points: dict[str, Point], keys: list[str], progress: bool):
        from tqdm import tqdm

        self.summary = summary
        self.points = points
        self.keys = keys
        self.bar = tqdm(total=summary.total, initial=summary.skipped, desc="sweep", unit="point", disable=not progress)

    def __enter__(self) -> Callable[[PointOutcome], None]:
        return self.record

    def __exit__(self, *exc_info) -> None:
        self.bar.close()

    def record(self, outcome: PointOutcome) -> None:
        settings = _describe_overrides(self.points[outcome.name].overrides, self.keys)
        if outcome.ok:
            self.summary.done += 1
            logger.info(
                "point %s done: test error %.2f %% after %d epochs, %.0f s (%s)",
                outcome.name, 100 * outcome.final_test_error, outcome.epochs, outcome.seconds, settings,
            )
        else:
            self.summary.failed.append(outcome)
            logger.error("point %s failed (%s): %s", outcome.name, settings, outcome.error)
            if outcome.traceback:
                logger.debug("traceback of point %s on %s:\n%s", outcome.name, outcome.worker, outcome.traceback)
        self.bar.update(1)
        self.bar.set_postfix(failed=len(self.summary.failed))


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
