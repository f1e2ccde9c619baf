"""Summaries of a sweep directory: test error per setting over seeds, as tables and a plot.

The points of ``sweep.json`` are grouped by the values of the swept keys, which are the
configuration keys whose value differs between points, ``training.seed`` and the run
settings aside. Each group reports the final test error (after the last epoch) and the best
one (the lowest of any epoch) of its completed runs: mean, sample standard deviation
(ddof = 1, empty for a single run), minimum and maximum over seeds.

Files written into the sweep directory: ``points.csv`` (one row per point),
``summary.csv`` (one row per group, errors as fractions), ``summary.md`` (the same in
percent) and, through ``plot_test_error``, ``test_error_vs_imbalance.png``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .sweep import SEED_KEY, read_manifest, result_path

POINTS_CSV = "points.csv"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
PLOT_NAME = "test_error_vs_imbalance.png"
X_KEY = "device.imbalance"
# Sideways shift between neighbouring lines of the plot, as a fraction of the x range.
DODGE_FRACTION = 0.008
# Keys that tell the reference settings apart, with the words their values get in plot labels.
LABEL_FORMS = {
    "zero_shift.mode": "zero shift {}",
    "tile.reference": "{} reference",
    "zero_shift.reference_error": "σ_ref = {}",
}


@dataclass
class PointRecord:
    """One point of the sweep and the test errors of its result file, if it completed."""

    name: str
    settings: dict[str, Any]
    status: str
    epochs: int = 0
    test_errors: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def final_test_error(self) -> float:
        return float(self.test_errors[-1]) if self.completed else math.nan

    @property
    def best_test_error(self) -> float:
        return float(self.test_errors.min()) if self.completed else math.nan

    @property
    def best_epoch(self) -> int:
        return int(np.argmin(self.test_errors)) + 1 if self.completed else 0


@dataclass(frozen=True)
class Statistics:
    """Mean, sample standard deviation, minimum and maximum of a set of values."""

    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Statistics:
        if not values:
            return cls(math.nan, math.nan, math.nan, math.nan)
        array = np.asarray(values, dtype=np.float64)
        std = float(array.std(ddof=1)) if len(array) > 1 else math.nan
        return cls(float(array.mean()), std, float(array.min()), float(array.max()))


@dataclass
class Group:
    """The points that share the values of the swept keys and differ only in seed."""

    values: tuple[Any, ...]
    records: list[PointRecord]

    @property
    def completed(self) -> list[PointRecord]:
        return [record for record in self.records if record.completed]

    @property
    def seeds(self) -> list[int]:
        return [record.settings.get(SEED_KEY) for record in self.completed]

    @property
    def final(self) -> Statistics:
        return Statistics.of([record.final_test_error for record in self.completed])

    @property
    def best(self) -> Statistics:
        return Statistics.of([record.best_test_error for record in self.completed])

    def setting(self, key: str) -> Any:
        """Return the value of ``key`` that the group's points share."""
        return self.records[0].settings.get(key)


@dataclass
class Report:
    keys: list[str]
    records: list[PointRecord]
    groups: list[Group]
    markdown: str
    files: list[Path]


def flat_settings(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return a nested configuration dict as dotted keys."""
    return {f"{section}.{name}": value for section, values in config.items() for name, value in values.items()}


def read_point(directory: Path, name: str, settings: dict[str, Any]) -> PointRecord:
    """Return the record of one point: ``missing`` without a result file, else its status."""
    import h5py

    path = result_path(directory, name)
    if not path.exists():
        return PointRecord(name, settings, "missing")
    try:
        with h5py.File(path, "r") as file:
            status = str(file.attrs.get("status", "unknown"))
            epochs = int(file.attrs.get("epochs_completed", 0))
            errors = np.asarray(file["metrics"]["test_error"][:epochs], dtype=np.float64)
    except (OSError, KeyError, ValueError) as error:
        return PointRecord(name, settings, f"unreadable ({error})")
    if status == "completed" and (epochs != settings.get("training.epochs") or len(errors) != epochs):
        status = "incomplete"
    return PointRecord(name, settings, status, epochs, errors)


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def swept_keys(manifest: dict[str, Any], records: list[PointRecord]) -> list[str]:
    """Return the keys whose value differs between points, seed aside.

    They come in the manifest's order of swept keys, then in sorted order, with
    device.imbalance last because it is the x axis of the plot.
    """
    varying = set()
    if records:
        for key in records[0].settings:
            if key != SEED_KEY and len({_hashable(record.settings.get(key)) for record in records}) > 1:
                varying.add(key)
    ordered = [key for key in manifest.get("keys", []) if key in varying]
    ordered += sorted(varying - set(ordered))
    if X_KEY in ordered:
        ordered.remove(X_KEY)
        ordered.append(X_KEY)
    return ordered


def _value_order(records: list[PointRecord], key: str) -> dict[Any, int]:
    """Rank the values of ``key``: numbers ascending, other values in order of appearance."""
    values = list(dict.fromkeys(_hashable(record.settings.get(key)) for record in records))
    if all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
        values.sort()
    return {value: rank for rank, value in enumerate(values)}


def group_records(records: list[PointRecord], keys: list[str]) -> list[Group]:
    """Group the records by their values of ``keys``, ordered key by key."""
    orders = {key: _value_order(records, key) for key in keys}
    groups: dict[tuple, Group] = {}
    for record in records:
        values = tuple(record.settings.get(key) for key in keys)
        identity = tuple(_hashable(value) for value in values)
        groups.setdefault(identity, Group(values, [])).records.append(record)
    return sorted(groups.values(), key=lambda group: tuple(orders[key][_hashable(value)] for key, value in zip(keys, group.values)))


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(format_value(item) for item in value)
    return str(value)


def _percent(statistics: Statistics) -> str:
    if math.isnan(statistics.mean):
        return "–"
    spread = "" if math.isnan(statistics.std) else f" ± {100 * statistics.std:.2f}"
    return f"{100 * statistics.mean:.2f}{spread} [{100 * statistics.min:.2f}, {100 * statistics.max:.2f}]"


def format_markdown(directory: Path, keys: list[str], groups: list[Group], records: list[PointRecord]) -> str:
    """Return the summary as a Markdown section: a heading, a line on the columns, the table."""
    completed = sum(record.completed for record in records)
    lines = [
        f"# Sweep {directory.name}",
        "",
        f"{len(records)} points, {completed} completed, in {len(groups)} settings. Test error in %: mean ± "
        "standard deviation over seeds [min, max]. Final: after the last epoch. Best: the lowest of any epoch.",
        "",
        "| " + " | ".join([*keys, "seeds", "final test error (%)", "best test error (%)"]) + " |",
        "|" + "---|" * (len(keys) + 3),
    ]
    for group in groups:
        cells = [format_value(value) for value in group.values]
        cells += [f"{len(group.completed)}/{len(group.records)}", _percent(group.final), _percent(group.best)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> Any:
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def write_points_csv(path: Path, keys: list[str], records: list[PointRecord]) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["name", *keys, SEED_KEY, "status", "epochs_completed", "final_test_error", "best_test_error", "best_epoch"])
        for record in records:
            writer.writerow(
                [record.name, *(_csv_value(record.settings.get(key)) for key in keys), record.settings.get(SEED_KEY),
                 record.status, record.epochs, _csv_value(record.final_test_error), _csv_value(record.best_test_error),
                 record.best_epoch or ""]
            )


def write_summary_csv(path: Path, keys: list[str], groups: list[Group]) -> None:
    statistics = ("mean", "std", "min", "max")
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            [*keys, "seeds_completed", "seeds_total", "seeds",
             *(f"final_test_error_{name}" for name in statistics), *(f"best_test_error_{name}" for name in statistics)]
        )
        for group in groups:
            final, best = group.final, group.best
            writer.writerow(
                [*(_csv_value(value) for value in group.values), len(group.completed), len(group.records),
                 " ".join(str(seed) for seed in group.seeds),
                 *(_csv_value(getattr(final, name)) for name in statistics),
                 *(_csv_value(getattr(best, name)) for name in statistics)]
            )


def load_records(directory: Path) -> tuple[dict[str, Any], list[PointRecord]]:
    """Return the manifest of ``directory`` and a record of each of its points."""
    manifest = read_manifest(directory)
    records = [
        read_point(directory, name, flat_settings(entry["config"]))
        for name, entry in manifest["points"].items()
    ]
    return manifest, records


def write_report(directory: str | Path) -> Report:
    """Write points.csv, summary.csv and summary.md into ``directory`` and return the report.

    Raises SweepError if ``directory`` has no readable sweep manifest.
    """
    directory = Path(directory)
    manifest, records = load_records(directory)
    keys = swept_keys(manifest, records)
    groups = group_records(records, keys)
    markdown = format_markdown(directory, keys, groups, records)
    files = [directory / POINTS_CSV, directory / SUMMARY_CSV, directory / SUMMARY_MD]
    write_points_csv(files[0], keys, records)
    write_summary_csv(files[1], keys, groups)
    files[2].write_text(markdown, encoding="utf-8")
    return Report(keys, records, groups, markdown, files)


def line_label(group: Group, line_keys: list[str]) -> str:
    """Return the legend entry of a line: its values of the swept keys other than the x axis."""
    if not line_keys:
        return "all points"
    parts = []
    for key in line_keys:
        value = format_value(group.setting(key))
        form = LABEL_FORMS.get(key)
        parts.append(form.format(value) if form else f"{key} = {value}")
    return ", ".join(parts)


def plot_test_error(groups: list[Group], keys: list[str], path: str | Path) -> bool:
    """Draw the final test error against device.imbalance, one line per other setting.

    Markers are the means over seeds, and the bars reach from the minimum to the maximum.
    Lines are shifted sideways by a small step, stated in the title. Returns False, writing
    nothing, when no group has a completed run. Needs matplotlib.
    """
    from matplotlib.figure import Figure

    line_keys = [key for key in keys if key != X_KEY]
    lines: dict[tuple, list[Group]] = {}
    for group in groups:
        if group.completed:
            identity = tuple(_hashable(group.setting(key)) for key in line_keys)
            lines.setdefault(identity, []).append(group)
    if not lines:
        return False

    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    # Each line is shifted sideways by a small step, so that error bars at the same u
    # stay apart.
    all_x = [group.setting(X_KEY) for members in lines.values() for group in members]
    step = DODGE_FRACTION * ((max(all_x) - min(all_x)) or 1.0) if len(lines) > 1 else 0.0
    highest = 0.0
    lowest = math.inf
    for index, members in enumerate(lines.values()):
        members = sorted(members, key=lambda group: group.setting(X_KEY))
        shift = (index - (len(lines) - 1) / 2) * step
        x = np.array([group.setting(X_KEY) for group in members], dtype=np.float64) + shift
        statistics = [group.final for group in members]
        mean = 100 * np.array([item.mean for item in statistics])
        low = 100 * np.array([item.min for item in statistics])
        high = 100 * np.array([item.max for item in statistics])
        highest = max(highest, float(high.max()))
        lowest = min(lowest, float(low.min()))
        axes.errorbar(
            x, mean, yerr=np.vstack([mean - low, high - mean]), marker="o", markersize=5, capsize=4,
            linewidth=1.5, label=line_label(members[0], line_keys),
        )
    if lowest > 0 and highest / lowest > 10:
        axes.set_yscale("log")
    axes.set_xlabel(f"up/down imbalance u ({X_KEY})")
    axes.set_ylabel("final test error (%)")
    title = "Final test error: mean over seeds, bars from min to max"
    if step:
        title += f"\n(lines shifted by up to ±{(len(lines) - 1) / 2 * step:.2g} in u to keep the bars apart)"
    axes.set_title(title, fontsize="medium")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=150)
    return True

