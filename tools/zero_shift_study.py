"""Run the zero-shifting comparison grid through the CLI and print its table.

Usage: python tools/zero_shift_study.py OUT_DIR [--epochs N] [--seeds N] [--workers N]
       [--imbalances U,U,...] [--report-only]

Each point (imbalance u, zero-shift mode, reference layout, seed) is one
``crossbar-emu train`` run writing OUT_DIR/<name>.h5; points whose file is complete are
skipped, so an interrupted study resumes. The table lists the final test error per point,
the mean over seeds and the spread (half the range).
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

MODES = ("off", "exact", "pulsed")
LAYOUTS = ("cell", "column")


def point_name(u: float, mode: str, layout: str, seed: int) -> str:
    return f"u{u:+.2f}_{mode}_{layout}_seed{seed}"


def is_complete(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as file:
            return file.attrs.get("status") == "completed"
    except (OSError, KeyError):
        return False


def run_point(out_dir: Path, u: float, mode: str, layout: str, seed: int, epochs: int, threads: int) -> str:
    path = out_dir / f"{point_name(u, mode, layout, seed)}.h5"
    if is_complete(path):
        return f"{path.name}: already complete"
    command = [
        "crossbar-emu", "train", "--imbalance", str(u), "--zero-shift", mode, "--reference", layout,
        "--seed", str(seed), "--epochs", str(epochs), "--threads", str(threads), "--out", str(path),
        "--overwrite", "--no-progress",
    ]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        return f"{path.name}: failed with exit status {completed.returncode}: {completed.stderr.strip().splitlines()[-1:]}"
    return f"{path.name}: done"


def final_test_error(path: Path) -> float:
    with h5py.File(path, "r") as file:
        return float(file["metrics"]["test_error"][-1])


def report(out_dir: Path, imbalances: list[float], seeds: int) -> str:
    lines = ["| u | zero shift | reference | " + " | ".join(f"seed {s}" for s in range(seeds)) + " | mean | ± |", "|---" * (seeds + 5) + "|"]
    for u, mode, layout in itertools.product(imbalances, MODES, LAYOUTS):
        errors = []
        for seed in range(seeds):
            path = out_dir / f"{point_name(u, mode, layout, seed)}.h5"
            errors.append(100 * final_test_error(path) if is_complete(path) else float("nan"))
        values = np.array(errors)
        cells = " | ".join(f"{e:.2f}" for e in errors)
        spread = (np.nanmax(values) - np.nanmin(values)) / 2 if np.any(np.isfinite(values)) else float("nan")
        lines.append(f"| {u:g} | {mode} | {layout} | {cells} | {np.nanmean(values):.2f} | {spread:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel, one thread each (default 2)")
    parser.add_argument("--imbalances", default="-0.5,0,0.2,0.5", help="comma-separated u values")
    parser.add_argument("--report-only", action="store_true", help="print the table of the finished runs")
    args = parser.parse_args()
    imbalances = [float(u) for u in args.imbalances.split(",")]
    args.out_dir.mkdir(parents=True, exist_ok=True)

    if not args.report_only:
        points = list(itertools.product(imbalances, MODES, LAYOUTS, range(args.seeds)))
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            futures = [pool.submit(run_point, args.out_dir, *point, args.epochs, 1) for point in points]
            for future in futures:
                print(future.result(), file=sys.stderr, flush=True)
    print(report(args.out_dir, imbalances, args.seeds))


if __name__ == "__main__":
    main()
