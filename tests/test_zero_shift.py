"""Symmetry points, their pulsed measurement and reference programming."""

import math

import numpy as np
import pytest

from crossbar_emu import Config, CrossbarLayer, CrossbarMLP
from crossbar_emu.config import ConfigError
from crossbar_emu.devices import DeviceParameters, symmetry_point
from crossbar_emu.kernels import calibration, device_laws, update
from crossbar_emu.network import child_rng
from crossbar_emu.zero_shift import measure_symmetry_points, reference_targets, zero_shift_layer

import naive

# Tolerance in standard errors for the statistical checks.
STATISTICAL_SIGMAS = 5.0

# Largest offset of the noiseless pair read-out from w*, a quarter of Δw_min = 0.001: the
# fixed points after the up and after the down pulse do not sit exactly symmetric about w*.
READOUT_OFFSET = 2.5e-4


def _layer(n_in=15, n_out=8, tile=(512, 512), reference="cell", seed=1, **device):
    config = Config().replace(
        {"tile.max_rows": tile[0], "tile.max_cols": tile[1], "tile.reference": reference, **{f"device.{k}": v for k, v in device.items()}}
    )
    return CrossbarLayer(
        n_in, n_out, device=config.device, tile=config.tile, update_config=config.update,
        out_scale=1.0, seed=seed, index=0, param_rng=child_rng(seed, 1, 0),
    )


def _uniform_device(u, beta=0.6, dw_min=0.001, shape=(1, 1)):
    """Device parameters without device-to-device variation, per the imbalance convention."""
    return DeviceParameters(
        alpha_up=np.full(shape, dw_min * (1 + min(u, 0.0))),
        alpha_down=np.full(shape, dw_min * (1 - max(u, 0.0))),
        b_max=np.full(shape, beta),
        b_min=np.full(shape, -beta),
    )


def _pairs(g, params, n_pairs, n_average=1, noise_std=0.0, seed=0, round_index=0):
    readout = np.empty_like(g)
    calibration.alternating_pairs(
        conductance=g, alpha_up=params.alpha_up, alpha_down=params.alpha_down, b_max=params.b_max,
        b_min=params.b_min, n_pairs=n_pairs, n_average=n_average, noise_std=noise_std,
        noise_kind=device_laws.NOISE_MULTIPLICATIVE, seed=seed, round_index=round_index, readout=readout,
    )
    return readout


# --- closed form --------------------------------------------------------------------------


@pytest.mark.parametrize("u", [-0.5, 0.0, 0.2, 0.5])
def test_closed_form_symmetric_bounds(u):
    params = _uniform_device(u)
    assert symmetry_point(params)[0, 0] == pytest.approx(0.6 * u / (2 - abs(u)), abs=1e-15)


def test_closed_form_balances_steps():
    layer = _layer(imbalance=0.3)
    p = layer.params
    w = symmetry_point(p)
    np.testing.assert_allclose(p.alpha_up * (1 - w / p.b_max), p.alpha_down * (1 - w / p.b_min), rtol=1e-12)


# --- pulsed measurement -------------------------------------------------------------------


@pytest.mark.parametrize("noise_std", [0.0, 0.3])
def test_alternating_pairs_match_naive(noise_std):
    layer = _layer(n_in=6, n_out=4, imbalance=0.2)
    p = layer.params
    start = np.clip(np.random.default_rng(0).uniform(-0.5, 0.5, layer.shape), p.b_min, p.b_max)
    g = start.copy()
    readout = _pairs(g, p, 40, n_average=7, noise_std=noise_std, seed=9, round_index=2)
    g_naive, readout_naive = naive.alternating_pairs(start, p.alpha_up, p.alpha_down, p.b_max, p.b_min, 40, 7, noise_std, False, 9, 2)
    np.testing.assert_allclose(g, g_naive, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(readout, readout_naive, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("u", [-0.5, 0.0, 0.2, 0.5])
def test_noiseless_pairs_converge_to_closed_form(u):
    params = _uniform_device(u)
    target = symmetry_point(params)[0, 0]
    g = np.full((1, 1), 0.6)
    distances = []
    for _ in range(3000):
        readout = _pairs(g, params, 1)
        distances.append(abs(readout[0, 0] - target))
    # The distance shrinks by 1 - (α⁺ + α⁻)/β per pair: compare the fitted rate within 10 %.
    expected_rate = (params.alpha_up[0, 0] + params.alpha_down[0, 0]) / 0.6
    steps = np.arange(200, 1200)
    fitted_rate = -np.polyfit(steps, np.log(np.array(distances)[steps]), 1)[0]
    assert fitted_rate == pytest.approx(expected_rate, rel=0.10)
    # After 3000 pairs from the bound the read-out is within 1e-3 of w*.
    assert distances[-1] < 1e-3
    # The averaged read-out lies within a fraction of a step of w*.
    final = _pairs(g, params, 2000, n_average=500)
    assert abs(final[0, 0] - target) < READOUT_OFFSET


@pytest.mark.parametrize("u", [-0.5, -0.2, 0.0, 0.3, 0.5])
def test_measured_point_follows_imbalance(u):
    params = _uniform_device(u, shape=(2, 3))
    g = np.zeros((2, 3))
    measured = _pairs(g, params, 4000, n_average=1000)
    np.testing.assert_allclose(measured, 0.6 * u / (2 - abs(u)), atol=READOUT_OFFSET)


def test_noisy_measurement_spread_is_few_steps():
    layer = _layer(n_in=99, n_out=100)
    closed_form = symmetry_point(layer.params)
    layer.conductance[...] = np.clip(0.0, layer.params.b_min, layer.params.b_max)
    measured = measure_symmetry_points(layer, 3000, 1, seed=3)
    error = measured - closed_form
    # Leave out the slowest devices (tiny steps from a gain near zero), because they are
    # far from converged after 3000 pairs. The others scatter by a few Δw_min.
    time_constant = 0.6 / (layer.params.alpha_up + layer.params.alpha_down)
    converged = time_constant < 600
    assert converged.mean() > 0.9
    assert np.median(np.abs(error[converged])) < 5 * 0.001
    assert np.std(error[converged]) < 8 * 0.001
    assert abs(np.mean(error[converged])) < 0.001


def test_random_pulses_settle_at_symmetry_point():
    # Equal-probability up and down pulses: the drift is linear in g and vanishes at w*,
    # so the stationary mean of each device is its symmetry point.
    n_rows, n_cols = 40, 5
    layer = _layer(n_in=n_cols - 1, n_out=n_rows, imbalance=0.5, bound_dtod=0.0)
    p = layer.params
    w_star = symmetry_point(p)
    g = np.zeros(layer.shape)
    weights_t = np.zeros((n_cols, n_rows))
    reference = np.zeros(layer.shape)
    up = np.zeros(n_rows, dtype=np.int64)
    down = np.zeros(n_rows, dtype=np.int64)
    cell_up = np.zeros(layer.shape, dtype=np.int64)
    cell_down = np.zeros_like(cell_up)

    signs = np.random.default_rng(4).choice([-1.0, 1.0], size=(24000, n_rows))
    x = np.ones(n_cols - 1)
    total = np.zeros(layer.shape)
    samples = 0
    for k, d in enumerate(signs):
        update.pulsed_update(
            conductance=g, reference=reference, weights_t=weights_t, alpha_up=p.alpha_up, alpha_down=p.alpha_down,
            b_max=p.b_max, b_min=p.b_min, x=x, bias=1.0, d=d, scale_x=1.0, scale_d=1.0, bit_length=1,
            noise_std=0.3, noise_kind=device_laws.NOISE_MULTIPLICATIVE, seed=5, update_index=k,
            pulses_up=up, pulses_down=down, cell_up=cell_up, cell_down=cell_down,
        )
        if k >= 4000:
            total += g
            samples += 1

    time_average = total / samples
    deviation = time_average - w_star
    # Each device's time average scatters with its walk: about α √(τ / 2) per device,
    # reduced by the independent stretches of the run (τ is about 2β / (α⁺ + α⁻) pulses).
    tau = 2 * 0.6 / (p.alpha_up + p.alpha_down)
    spread = p.alpha_up * np.sqrt(tau / 2) / np.sqrt(samples / (2 * tau))
    standard_error = np.sqrt(np.mean(spread**2) / deviation.size)
    assert abs(deviation.mean()) < STATISTICAL_SIGMAS * standard_error + 1e-4, (
        f"mean deviation {deviation.mean():.2e} exceeds {STATISTICAL_SIGMAS} standard errors ({standard_error:.2e})"
    )
    # Devices with u = 0.5 sit near β/3, far from the start at 0.
    assert np.mean(time_average) > 0.1


# --- reference programming ----------------------------------------------------------------


def test_exact_zero_shift_programs_closed_form():
    layer = _layer(imbalance=0.5)
    config = Config().replace({"zero_shift.mode": "exact"}).zero_shift
    result = zero_shift_layer(layer, config, seed=0, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(layer.reference, result.closed_form)
    assert result.pulses == 0


def test_column_reference_takes_row_mean():
    layer = _layer(n_in=9, n_out=4, tile=(512, 4), reference="column", imbalance=0.5)
    points = symmetry_point(layer.params)
    targets = reference_targets(layer, points)
    assert targets.shape == (4, 3)
    np.testing.assert_allclose(targets[:, 0], points[:, 0:4].mean(axis=1))
    np.testing.assert_allclose(targets[:, 2], points[:, 8:10].mean(axis=1))


def test_reference_error_has_requested_spread():
    layer = _layer(n_in=199, n_out=100, imbalance=0.2)
    config = Config().replace({"zero_shift.mode": "exact", "zero_shift.reference_error": 0.05}).zero_shift
    result = zero_shift_layer(layer, config, seed=0, rng=np.random.default_rng(1))
    error = layer.reference - result.closed_form
    n = error.size
    assert abs(error.mean()) < STATISTICAL_SIGMAS * 0.05 / math.sqrt(n)
    assert abs(error.std() - 0.05) < STATISTICAL_SIGMAS * 0.05 / math.sqrt(2 * n)


def test_pulsed_zero_shift_reports_tiles():
    layer = _layer(n_in=19, n_out=12, tile=(8, 8), imbalance=0.3)
    config = Config().replace({"zero_shift.mode": "pulsed", "zero_shift.calibration_pairs": 300, "zero_shift.calibration_average": 50}).zero_shift
    result = zero_shift_layer(layer, config, seed=0, rng=np.random.default_rng(1))
    assert result.pulses == 600 * 12 * 20
    assert len(result.tiles) == 2 * 3
    assert result.tiles["pulses"].sum() == result.pulses
    np.testing.assert_array_equal(layer.reference, result.measured)
    assert np.all(result.tiles["max_abs_error"] >= result.tiles["mean_abs_error"])


def test_weights_programmed_around_shifted_zero():
    config = Config().replace({"zero_shift.mode": "exact", "device.imbalance": 0.5, "network.hidden": [16]})
    net = CrossbarMLP(config)
    for index, layer in enumerate(net.layers):
        w_init = net.initial_weights(index, layer.n_in, layer.n_out)
        expected = np.clip(layer.reference + w_init, layer.params.b_min, layer.params.b_max)
        np.testing.assert_array_equal(layer.conductance, expected)
        np.testing.assert_array_equal(layer.weights, layer.conductance - layer.reference)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"zero_shift.reference_error": -0.01}, "zero_shift.reference_error"),
        ({"zero_shift.mode": "pulsed", "zero_shift.calibration_pairs": 0}, "zero_shift.calibration_pairs"),
        ({"zero_shift.mode": "exact", "zero_shift.calibration_pairs": 100}, "zero_shift.calibration_pairs"),
        ({"zero_shift.calibration_average": 10}, "zero_shift.calibration_average"),
        ({"zero_shift.mode": "pulsed", "zero_shift.calibration_pairs": 10, "zero_shift.calibration_average": 20}, "zero_shift.calibration_average"),
        ({"zero_shift.mode": "exact", "device.kind": "float"}, "zero_shift.mode"),
        ({"zero_shift.mode": "auto"}, "zero_shift.mode"),
    ],
)
def test_invalid_zero_shift_settings(overrides, key):
    with pytest.raises(ConfigError) as raised:
        Config().replace(overrides)
    assert raised.value.key == key


# --- command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["--reference-error", "-0.1"], "--reference-error (zero_shift.reference_error): -0.1"),
        (["--zero-shift", "pulsed", "--calibration-pairs", "0"], "--calibration-pairs (zero_shift.calibration_pairs): 0"),
        (["--calibration-pairs", "100"], "applies only to zero_shift.mode = \"pulsed\""),
        (["--zero-shift", "exact", "--device", "float"], "has none"),
    ],
)
def test_cli_rejects_invalid_zero_shift(options, fragment, tmp_path, capsys):
    from crossbar_emu.cli import main

    with pytest.raises(SystemExit) as raised:
        main(["train", *options, "--out", str(tmp_path / "run.h5")])
    assert raised.value.code == 2
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "run.h5").exists()


def test_cli_calibrate_prints_convergence_table(capsys):
    from crossbar_emu.cli import main

    assert main(["calibrate", "--tile-size", "16x8", "--pairs", "10,3000", "--imbalance", "0.5", "--noise-std", "0"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert lines[0].split()[:3] == ["pairs", "average", "pulses"]
    short, long = (line.split() for line in lines[1:3])
    assert short[0] == "10"
    assert long[0] == "3000"
    assert long[2] == "6000"
    # The mean error falls with more pairs, from 0.2 to a few Δw_min; the slowest devices
    # (small steps) keep it above the typical one.
    assert float(long[3]) < float(short[3]) / 10
    assert float(long[3]) < 0.01


def test_cli_calibrate_rejects_bad_pairs(capsys):
    from crossbar_emu.cli import main

    with pytest.raises(SystemExit) as raised:
        main(["calibrate", "--pairs", "10,0"])
    assert raised.value.code == 2
    assert "--pairs: 0" in capsys.readouterr().err


@pytest.mark.mnist
def test_result_file_records_calibration(tmp_path, mnist):
    import h5py

    from crossbar_emu.cli import main

    out = tmp_path / "zs.h5"
    code = main([
        "train", "--zero-shift", "pulsed", "--calibration-pairs", "200", "--calibration-average", "50",
        "--reference", "column", "--reference-error", "0.02", "--imbalance", "0.5", "--tile-size", "128",
        "--hidden", "32", "--train-limit", "200", "--test-limit", "100", "--epochs", "1", "--out", str(out), "--no-progress",
    ])
    assert code == 0
    with h5py.File(out, "r") as file:
        layer = file["layers/layer_0"]
        assert layer.attrs["zero_shift"] == "pulsed"
        assert layer.attrs["calibration_pairs"] == 200
        assert layer.attrs["calibration_average"] == 50
        assert layer.attrs["reference_error"] == 0.02
        assert layer.attrs["calibration_pulses"] == 2 * 200 * 32 * 785
        assert layer["symmetry_point"].shape == (32, 785)
        assert layer["symmetry_point_measured"].shape == (32, 785)
        assert layer["reference"].shape == (32, 7)
        table = layer["calibration"][...]
        assert len(table) == 7
        assert table["pulses"].sum() == layer.attrs["calibration_pulses"]
        for name in ("symmetry_point", "symmetry_point_measured", "calibration"):
            assert "units" in layer[name].attrs
            assert "description" in layer[name].attrs
