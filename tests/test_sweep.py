"""Tests of sweeps and their reports: grid expansion, point names, resuming after a kill,
local and Dask execution, validation before any run, and the report's tables and plot.

The runs train tiny networks on the real MNIST files. The CLI runs in-process through
``crossbar_emu.sweep_cli.main``, except where a sweep must be killed, which runs it as
``python -m crossbar_emu sweep`` in a subprocess.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from crossbar_emu import mnist, sweep_cli
from crossbar_emu.config import Config, ConfigError
from crossbar_emu.sweep import Grid, build_points, canonical_config, load_grid_file, point_name

TINY = ["--hidden", "16", "--train-limit", "200", "--test-limit", "100", "--epochs", "1"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_main(args: list[str]) -> int:
    """Run the sweep CLI in-process and return its exit status, whether returned or raised."""
    try:
        return sweep_cli.main(args)
    except SystemExit as exit_request:
        return exit_request.code


def parse_grid(args: list[str]) -> Grid:
    parser = sweep_cli.build_parser()
    grid, _ = sweep_cli.grid_from_args(parser.parse_args(["sweep", "--out", "unused", *args]), parser)
    return grid


def result_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.h5"))


def file_status(path: Path) -> str:
    with h5py.File(path, "r") as file:
        return str(file.attrs["status"])


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Directory of the real MNIST files, or a skip if CROSSBAR_EMU_DATA is unset."""
    value = os.environ.get(mnist.ENV_VAR)
    if not value:
        pytest.skip(f"{mnist.ENV_VAR} is not set, so the real MNIST files cannot be found")
    return Path(value)


LOCAL_SWEEP = [*TINY, "--imbalance", "0,0.3", "--seeds", "2", "--no-progress"]


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, mnist_dir) -> Path:
    """A finished sweep of 2 imbalances x 2 seeds, run by two local worker processes."""
    directory = tmp_path_factory.mktemp("local") / "sweep"
    code = run_main(["sweep", *LOCAL_SWEEP, "--workers", "2", "--out", str(directory)])
    assert code == 0
    return directory


# ---------------------------------------------------------------------------
# Grids and names
# ---------------------------------------------------------------------------


def test_grid_cross_product_seeds_fixed():
    overrides = parse_grid(["--imbalance", "0,0.2,0.5", "--zero-shift", "off,exact", "--seeds", "2", "--epochs", "3"]).expand()

    settings = [(point["device.imbalance"], point["zero_shift.mode"], point["training.seed"]) for point in overrides]
    expected = [(u, mode, seed) for u in (0.0, 0.2, 0.5) for mode in ("off", "exact") for seed in (0, 1)]
    assert settings == expected
    assert all(point["training.epochs"] == 3 for point in overrides)
    assert len(build_points(Config(), parse_grid(["--imbalance", "0,0.2,0.5", "--zero-shift", "off,exact", "--seeds", "2"]))) == 12


def test_grid_seed_list_and_list_options():
    overrides = parse_grid(["--seed", "3,7", "--hidden", "16", "--hidden", "8,8", "--tile-size", "64,32x128", "--update-management", "on,off"]).expand()

    assert len(overrides) == 2 * 2 * 2 * 2
    assert {point["training.seed"] for point in overrides} == {3, 7}
    assert [point["training.seed"] for point in overrides[:2]] == [3, 7]
    assert {tuple(point["network.hidden"]) for point in overrides} == {(16,), (8, 8)}
    assert {(point["tile.max_rows"], point["tile.max_cols"]) for point in overrides} == {(64, 64), (32, 128)}
    assert {point["update.update_management"] for point in overrides} == {True, False}


def test_grid_repeated_value_runs_once():
    points = build_points(Config(), parse_grid(["--imbalance", "0,0.0,0.2"]))

    assert [point.config.device.imbalance for point in points] == [0.0, 0.2]


def test_grid_file_tables_and_overrides(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(
        "seeds = 2\n"
        "[fixed]\n"
        "training.epochs = 3\n"
        '"network.hidden" = [16]\n'
        "[[grid]]\n"
        '"zero_shift.mode" = ["off", "exact"]\n'
        "device.imbalance = [0, 0.5]\n"
        "[[grid]]\n"
        'zero_shift = { mode = ["pulsed"], reference_error = [0.05] }\n'
        'tile.reference = ["cell", "column"]\n'
        "device.imbalance = [0, 0.5]\n",
        encoding="utf-8",
    )

    grid = load_grid_file(path)
    overrides = grid.expand()
    points = build_points(Config(), grid)

    assert len(overrides) == (2 * 2 + 2 * 2) * 2
    assert len(points) == 16
    assert all(point["training.epochs"] == 3 and point["network.hidden"] == [16] for point in overrides)
    assert {point["training.seed"] for point in overrides} == {0, 1}
    pulsed = [point for point in overrides if point["zero_shift.mode"] == "pulsed"]
    assert {point["tile.reference"] for point in pulsed} == {"cell", "column"}
    assert all(point["zero_shift.reference_error"] == 0.05 for point in pulsed)
    assert grid.keys == ["zero_shift.mode", "device.imbalance", "zero_shift.reference_error", "tile.reference", "training.seed"]

    replaced = grid.override({"device.imbalance": 0.2}, []).expand()
    assert len(replaced) == (2 + 2) * 2
    assert all(point["device.imbalance"] == 0.2 for point in replaced)


def test_grid_file_conflicts_rejected(tmp_path):
    cases = {
        "unknown entry": ("[grids]\n", "grids"),
        "not a list": ('[grid]\n"device.imbalance" = 0.2\n', "device.imbalance"),
        "fixed and grid": ('[fixed]\ndevice.imbalance = 0.1\n[grid]\ndevice.imbalance = [0, 0.2]\n', "device.imbalance"),
        "seeds twice": ('seeds = 2\n[grid]\ntraining.seed = [1, 2]\n', "seeds"),
        "sweep-owned key": ('[fixed]\nrun.out = "a.h5"\n', "run.out"),
        "swept run key": ("[grid]\nrun.threads = [1, 2]\n", "run.threads"),
    }
    for case, (text, key) in cases.items():
        path = tmp_path / "grid.toml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError) as raised:
            load_grid_file(path)
        assert raised.value.key == key, case


def test_point_name_stable_across_processes(tmp_path):
    config = canonical_config(Config().replace({"device.imbalance": 0.3, "zero_shift.mode": "exact", "training.epochs": 2}))
    code = (
        "from crossbar_emu.config import Config\n"
        "from crossbar_emu.sweep import canonical_config, point_name\n"
        "config = Config().replace({'training.epochs': 2, 'zero_shift.mode': 'exact', 'device.imbalance': 0.3})\n"
        "print(point_name(canonical_config(config)))\n"
    )
    # cwd is outside the source tree, so the subprocess imports the installed package.
    other = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )

    name = point_name(config)
    assert len(name) == 12
    assert int(name, 16) >= 0
    assert other.stdout.strip() == name


def test_point_name_ignores_run_settings():
    base = canonical_config(Config())
    run_only = canonical_config(Config().replace({"run.out": "x.h5", "run.threads": 2, "run.data_dir": "/data", "run.overwrite": True}))
    integer = canonical_config(Config().replace({"device.imbalance": 0, "network.output_scale": [1]}))
    other = canonical_config(Config().replace({"device.imbalance": 0.2}))
    other_seed = canonical_config(Config().replace({"training.seed": 1}))

    assert point_name(run_only) == point_name(base)
    assert point_name(integer) == point_name(base)
    assert point_name(other) != point_name(base)
    assert point_name(other_seed) != point_name(base)


# ---------------------------------------------------------------------------
# Validation before any run
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid_text", "options", "fragments"),
    [
        pytest.param(None, ["--imbalance", "0,1.5"], ["--imbalance", "device.imbalance", "1.5", "(-1, 1)"], id="option-range"),
        pytest.param(None, ["--zero-shift", "off,exactly"], ["--zero-shift", "exactly", "off, exact, pulsed"], id="option-choice"),
        pytest.param(None, ["--calibration-pairs", "100", "--zero-shift", "off,pulsed"], ["zero_shift.calibration_pairs", "100", "pulsed"], id="pair-with-mode"),
        pytest.param(None, ["--trace-cell", "0,20,0"], ["--trace-cell", "trace.cells", "[0, 20, 0]", "row 20"], id="trace-outside-layer"),
        pytest.param('[grid]\n"device.imbalanc" = [0, 0.2]\n', [], ["device.imbalanc", "[0, 0.2]", "unknown configuration key"], id="file-unknown-key"),
        pytest.param("[grid]\ndevice.imbalance = [0, 1.5]\n", [], ["device.imbalance", "1.5", "--grid"], id="file-range"),
    ],
)
def test_invalid_grid_fails_before_run(tmp_path, capsys, grid_text, options, fragments):
    out = tmp_path / "sweep"
    args = ["sweep", *TINY, "--out", str(out), "--no-progress", *options]
    if grid_text is not None:
        grid = tmp_path / "grid.toml"
        grid.write_text(grid_text, encoding="utf-8")
        args += ["--grid", str(grid)]

    code = run_main(args)

    error = capsys.readouterr().err
    assert code == 2
    for fragment in fragments:
        assert fragment in error
    assert not out.exists()


# ---------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------


def sweep_command(out: Path) -> list[str]:
    """Command line of a sweep of 6 points, each long enough to stop the sweep between them."""
    return [
        sys.executable, "-m", "crossbar_emu", "sweep", "--hidden", "64", "--train-limit", "8000",
        "--test-limit", "200", "--epochs", "1", "--imbalance", "0,0.1,0.2,0.3,0.4,0.5", "--workers", "1",
        "--out", str(out), "--no-progress",
    ]


def stop_after_first_point(command: list[str], cwd: Path, signum: int) -> tuple[subprocess.Popen, list, list]:
    """Start the sweep, send ``signum`` once a result file appears, and wait for the sweep to exit.

    Returns the process, its child processes and those of them that run points, all taken
    just before the signal. The other child is multiprocessing's resource tracker.
    """
    import psutil

    out = Path(command[command.index("--out") + 1])
    with open(cwd / f"stopped-{signum}.log", "wb") as log:
        process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not result_files(out) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        children = psutil.Process(process.pid).children(recursive=True)
        workers = [child for child in children if "resource_tracker" not in " ".join(child.cmdline())]
        process.send_signal(signum)
        process.wait(timeout=60)
    return process, children, workers


def test_sweep_resumes_after_kill(tmp_path, mnist_dir):
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "sweep"
    command = sweep_command(out)
    _, children, _ = stop_after_first_point(command, tmp_path, signal.SIGKILL)

    # The workers notice that the sweep process is gone and exit by themselves.
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    finished = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in result_files(out)}
    assert 1 <= len(finished) < 6

    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    assert rerun.returncode == 0, rerun.stderr
    assert f"{6 - len(finished)} done, {len(finished)} skipped, 0 failed" in rerun.stdout
    for name, identity in finished.items():
        path = out / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == identity
    paths = result_files(out)
    assert len(paths) == 6
    assert all(file_status(path) == "completed" for path in paths)
    assert list(out.glob("*.part-*")) == []
    manifest = json.loads((out / "sweep.json").read_text())
    assert sorted(f"{name}.h5" for name in manifest["points"]) == [path.name for path in paths]


def test_sigterm_stops_sweep_and_workers(tmp_path, mnist_dir):
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "sweep"
    process, children, workers = stop_after_first_point(sweep_command(out), tmp_path, signal.SIGTERM)

    log = (tmp_path / f"stopped-{signal.SIGTERM}.log").read_text()
    assert process.returncode == 128 + signal.SIGTERM
    assert "not run" in log
    assert "SIGTERM; rerun the same command" in log
    # The sweep joins its workers before it exits. The resource tracker exits on its own
    # once the sweep is gone.
    assert workers != []
    assert [worker for worker in workers if worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE] == []
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    assert 1 <= len(result_files(out)) < 6
    assert all(file_status(path) == "completed" for path in result_files(out))


def test_failed_point_does_not_stop_others(tmp_path, capsys, mnist_dir):
    out = tmp_path / "sweep"
    points = build_points(Config(), parse_grid([*TINY, "--imbalance", "0,0.3"]))
    blocked = out / f"{points[0].name}.h5"
    blocked.mkdir(parents=True)

    code = run_main(["sweep", *TINY, "--imbalance", "0,0.3", "--workers", "1", "--out", str(out), "--no-progress"])

    output = capsys.readouterr().out
    assert code == 1
    assert "2 points: 1 done, 0 skipped, 1 failed" in output
    assert f"failed {points[0].name}" in output
    assert file_status(out / f"{points[1].name}.h5") == "completed"


def test_dask_matches_local(local_sweep, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    out = tmp_path / "dask"
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        code = run_main(["sweep", *LOCAL_SWEEP, "--scheduler", cluster.scheduler_address, "--out", str(out)])

    assert code == 0
    local_paths = result_files(local_sweep)
    assert [path.name for path in result_files(out)] == [path.name for path in local_paths]
    for local_path in local_paths:
        with h5py.File(local_path, "r") as local, h5py.File(out / local_path.name, "r") as remote:
            assert local["metrics"]["test_error"].tobytes() == remote["metrics"]["test_error"].tobytes()
            assert sorted(local["layers"]) == sorted(remote["layers"])
            for layer in local["layers"]:
                local_g = local[f"layers/{layer}/conductance"][...]
                remote_g = remote[f"layers/{layer}/conductance"][...]
                assert local_g.tobytes() == remote_g.tobytes(), f"{local_path.name} {layer}"


def test_scheduler_needs_distributed_extra(tmp_path, caplog, monkeypatch, mnist_dir):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    out = tmp_path / "sweep"

    code = run_main(["sweep", *TINY, "--out", str(out), "--scheduler", "tcp://127.0.0.1:1", "--no-progress"])

    assert code == 1
    assert 'pip install "crossbar-emu[distributed]"' in caplog.text
    assert not out.exists()


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def final_errors_by_imbalance(directory: Path) -> dict[float, list[float]]:
    errors: dict[float, list[float]] = {}
    for path in result_files(directory):
        with h5py.File(path, "r") as file:
            config = json.loads(file.attrs["config"])
            errors.setdefault(config["device"]["imbalance"], []).append(float(file["metrics"]["test_error"][-1]))
    return errors


def test_report_tables_and_plot(local_sweep, capsys):
    code = run_main(["report", str(local_sweep)])

    printed = capsys.readouterr().out
    expected = final_errors_by_imbalance(local_sweep)
    with open(local_sweep / "summary.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert code == 0
    assert [float(row["device.imbalance"]) for row in rows] == [0.0, 0.3]
    for row in rows:
        errors = expected[float(row["device.imbalance"])]
        assert row["seeds_completed"] == "2"
        assert row["seeds"] == "0 1"
        assert float(row["final_test_error_mean"]) == pytest.approx(np.mean(errors), rel=1e-12)
        assert float(row["final_test_error_std"]) == pytest.approx(np.std(errors, ddof=1), rel=1e-12)
        assert float(row["final_test_error_min"]) == min(errors)
        assert float(row["final_test_error_max"]) == max(errors)
        # One epoch, so the best test error is the final one.
        assert float(row["best_test_error_mean"]) == pytest.approx(np.mean(errors), rel=1e-12)

    markdown = (local_sweep / "summary.md").read_text(encoding="utf-8")
    errors = expected[0.0]
    line = (
        f"| 0 | 2/2 | {100 * np.mean(errors):.2f} ± {100 * np.std(errors, ddof=1):.2f} "
        f"[{100 * min(errors):.2f}, {100 * max(errors):.2f}] |"
    )
    assert "| device.imbalance | seeds | final test error (%) | best test error (%) |" in markdown
    assert line in markdown
    assert markdown in printed

    with open(local_sweep / "points.csv", newline="", encoding="utf-8") as stream:
        points = list(csv.DictReader(stream))
    assert len(points) == 4
    assert all(point["status"] == "completed" for point in points)

    png = (local_sweep / "test_error_vs_imbalance.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)


def test_report_without_manifest_fails(tmp_path, caplog):
    code = run_main(["report", str(tmp_path)])

    assert code == 1
    assert "sweep.json not found" in caplog.text
