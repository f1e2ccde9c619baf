"""Kernels against their naive NumPy versions and against the device law's closed forms."""

import math
import zlib

import numba
import numpy as np
import pytest

from crossbar_emu.kernels import bits, device_laws, mvm, rng, update

import naive


@numba.njit
def _uniforms(key, n):
    out = np.empty(n)
    for k in range(n):
        out[k] = rng.uniform(key, k)
    return out


@numba.njit
def _normals(key, n):
    out = np.empty(n)
    counter = 0
    for k in range(n):
        out[k], counter = rng.normal(key, counter)
    return out, counter


@numba.njit
def _stream_key(seed, update_index, stream, index):
    return rng.stream_key(seed, update_index, stream, index)


@numba.njit
def _popcount(word):
    return bits.popcount(word)


@numba.njit
def _up(g, alpha, b_max, b_min, noise, kind):
    return device_laws.soft_bounds_up(g, alpha, b_max, b_min, noise, kind)


@numba.njit
def _down(g, alpha, b_max, b_min, noise, kind):
    return device_laws.soft_bounds_down(g, alpha, b_max, b_min, noise, kind)


# --- random numbers ---------------------------------------------------------------------


def test_stream_key_matches_naive():
    for args in [(0, 0, 1, 0), (7, 123456, 3, 255), (2**62, 10**12, 2, 784)]:
        assert int(_stream_key(*args)) == naive.stream_key(*args)


def test_uniforms_match_naive():
    key = naive.stream_key(42, 5, 1, 9)
    got = _uniforms(np.uint64(key), 100)
    expected = [naive.uniform(key, k) for k in range(100)]
    np.testing.assert_array_equal(got, expected)


def test_normals_match_naive():
    # 20,000 variates reach the wedges and the tail, the rare paths, many times.
    key = naive.stream_key(1, 2, 3, 4)
    got, counter = _normals(np.uint64(key), 20_000)
    expected = []
    naive_counter = 0
    for _ in range(20_000):
        value, naive_counter = naive.normal(key, naive_counter)
        expected.append(value)
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-15)
    assert counter == naive_counter
    assert counter > 20_000
    assert np.max(np.abs(got)) > 3.6541528853610088


def test_uniform_moments():
    n = 200_000
    values = _uniforms(np.uint64(naive.stream_key(3, 0, 1, 0)), n)
    assert values.min() >= 0.0
    assert values.max() < 1.0
    # Mean 1/2 and variance 1/12, each within 5 standard errors.
    assert abs(values.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(values.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)


def test_normal_moments():
    n = 2_000_000
    values, _ = _normals(np.uint64(naive.stream_key(4, 0, 3, 0)), n)
    assert abs(values.mean()) < 5 / math.sqrt(n)
    assert abs(values.var() - 1.0) < 5 * math.sqrt(2 / n)
    assert abs(np.mean(values**3)) < 5 * math.sqrt(15 / n)
    assert abs(np.mean(values**4) - 3.0) < 5 * math.sqrt(96 / n)
    # Successive variates are independent.
    assert abs(np.corrcoef(values[:-1], values[1:])[0, 1]) < 5 / math.sqrt(n)


def test_normal_distribution_matches_gaussian():
    values, _ = _normals(np.uint64(naive.stream_key(5, 0, 3, 0)), 400_000)
    ordered = np.sort(values)
    cdf = 0.5 * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in ordered]))
    empirical = np.arange(1, ordered.size + 1) / ordered.size
    # Kolmogorov-Smirnov distance below its 0.1 % critical value, 1.95 / sqrt(n).
    assert np.max(np.abs(cdf - empirical)) < 1.95 / math.sqrt(ordered.size)
    # Tail beyond 3.5: expected fraction 4.65e-4 of both sides together.
    tail = np.mean(np.abs(values) > 3.5)
    expected = math.erfc(3.5 / math.sqrt(2.0))
    assert abs(tail - expected) < 5 * math.sqrt(expected / values.size)


def test_popcount():
    generator = np.random.default_rng(0)
    for word in [0, 1, 2**63, 2**64 - 1, *generator.integers(0, 2**63, 20).tolist()]:
        assert _popcount(np.uint64(word)) == bin(word).count("1")


# --- device law -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [device_laws.NOISE_MULTIPLICATIVE, device_laws.NOISE_ADDITIVE])
@pytest.mark.parametrize("g", [-0.5, -0.1, 0.0, 0.2, 0.55])
@pytest.mark.parametrize("noise", [0.0, 0.3, -0.45])
def test_single_pulse_matches_law(kind, g, noise):
    alpha_up, alpha_down, b_max, b_min = 0.0012, 0.0009, 0.6, -0.7
    additive = kind == device_laws.NOISE_ADDITIVE
    assert _up(g, alpha_up, b_max, b_min, noise, kind) == pytest.approx(
        naive.soft_bounds_step(g, True, alpha_up, b_max, b_min, noise, additive), rel=1e-15, abs=1e-18
    )
    assert _down(g, alpha_down, b_max, b_min, noise, kind) == pytest.approx(
        naive.soft_bounds_step(g, False, alpha_down, b_max, b_min, noise, additive), rel=1e-15, abs=1e-18
    )


def test_noiseless_pulses_saturate_geometrically():
    # Without noise, n up pulses from g0 give b_max - (b_max - g0) (1 - α/b_max)^n.
    alpha, b_max, b_min = 0.01, 0.6, -0.6
    g = -0.3
    for n in range(1, 2001):
        g = _up(g, alpha, b_max, b_min, 0.0, device_laws.NOISE_MULTIPLICATIVE)
        if n in (1, 10, 100, 2000):
            expected = b_max - (b_max + 0.3) * (1 - alpha / b_max) ** n
            assert g == pytest.approx(expected, rel=1e-9)
    assert g <= b_max


def test_pulse_at_bound_stays_at_bound():
    alpha, b_max, b_min = 0.001, 0.6, -0.5
    for kind in (device_laws.NOISE_MULTIPLICATIVE, device_laws.NOISE_ADDITIVE):
        assert _up(b_max, alpha, b_max, b_min, 0.0, kind) == b_max
        assert _down(b_min, alpha, b_max, b_min, 0.0, kind) == b_min
        # A large step would overshoot the bound; the clip keeps the conductance at the bound.
        assert _up(0.5, 0.5, b_max, b_min, 3.0, kind) == b_max
        assert _down(-0.4, 0.5, b_max, b_min, 3.0, kind) == b_min


def test_additive_noise_moves_at_bound_multiplicative_does_not():
    alpha, b_max, b_min = 0.001, 0.6, -0.6
    # At g = b_max the multiplicative step vanishes whatever the noise.
    assert _down(b_max, alpha, b_max, b_min, 0.5, device_laws.NOISE_MULTIPLICATIVE) == pytest.approx(b_max - alpha * 2.0 * 1.5)
    assert _up(b_max, alpha, b_max, b_min, -0.5, device_laws.NOISE_MULTIPLICATIVE) == b_max
    # The additive term keeps acting there: α σ ξ.
    assert _up(b_max, alpha, b_max, b_min, -0.5, device_laws.NOISE_ADDITIVE) == pytest.approx(b_max - 0.5 * alpha)


# --- pulsed update against the naive version ---------------------------------------------


def _random_layer(n_rows, n_cols, seed, g_range=0.3):
    generator = np.random.default_rng(seed)
    shape = (n_rows, n_cols)
    params = {
        "alpha_up": 0.001 * np.abs(1 + 0.3 * generator.standard_normal(shape)),
        "alpha_down": 0.001 * np.abs(1 + 0.3 * generator.standard_normal(shape)),
        "b_max": np.abs(0.6 * (1 + 0.3 * generator.standard_normal(shape))),
        "b_min": -np.abs(0.6 * (1 + 0.3 * generator.standard_normal(shape))),
    }
    reference = 0.01 * generator.standard_normal(shape)
    conductance = np.clip(generator.uniform(-g_range, g_range, shape), params["b_min"], params["b_max"])
    return conductance, reference, params


def _run_kernel(conductance, reference, params, x, d, scale=1.0, bit_length=10, noise_std=0.3, additive=False, seed=11, update_index=3):
    g = conductance.copy()
    weights_t = np.ascontiguousarray((g - reference).T)
    n_rows = g.shape[0]
    up = np.zeros(n_rows, dtype=np.int64)
    down = np.zeros(n_rows, dtype=np.int64)
    cell_up = np.zeros(conductance.shape, dtype=np.int64)
    cell_down = np.zeros_like(cell_up)
    update.pulsed_update(
        conductance=g, reference=reference, weights_t=weights_t, x=x, bias=1.0, d=d,
        scale_x=scale, scale_d=scale, bit_length=bit_length, noise_std=noise_std,
        noise_kind=device_laws.NOISE_ADDITIVE if additive else device_laws.NOISE_MULTIPLICATIVE,
        seed=seed, update_index=update_index, pulses_up=up, pulses_down=down,
        cell_up=cell_up, cell_down=cell_down, **params,
    )
    # The per-cell totals add up to the per-row counts.
    np.testing.assert_array_equal(cell_up.sum(axis=1), up)
    np.testing.assert_array_equal(cell_down.sum(axis=1), down)
    return g, weights_t.T, up, down


def _run_naive(conductance, reference, params, x, d, scale=1.0, bit_length=10, noise_std=0.3, additive=False, seed=11, update_index=3):
    return naive.pulsed_update(
        conductance, reference, params["alpha_up"], params["alpha_down"], params["b_max"], params["b_min"],
        x, 1.0, d, scale, scale, bit_length, noise_std, additive, seed, update_index,
    )


CASES = {
    "dense": dict(n_rows=12, n_cols=17, x_kind="dense", d_kind="dense"),
    "sparse input": dict(n_rows=9, n_cols=40, x_kind="sparse", d_kind="dense"),
    "zero input": dict(n_rows=5, n_cols=8, x_kind="zero", d_kind="dense"),
    "zero error": dict(n_rows=5, n_cols=8, x_kind="dense", d_kind="zero"),
    "saturated probability": dict(n_rows=6, n_cols=7, x_kind="large", d_kind="large"),
    "one row": dict(n_rows=1, n_cols=30, x_kind="dense", d_kind="dense"),
    "one column": dict(n_rows=10, n_cols=1, x_kind="dense", d_kind="dense"),
}


def _vectors(case, generator):
    n_rows, n_cols = case["n_rows"], case["n_cols"]
    x = {
        "dense": lambda: generator.uniform(-1, 1, n_cols - 1),
        "sparse": lambda: np.where(generator.random(n_cols - 1) < 0.2, generator.random(n_cols - 1), 0.0),
        "zero": lambda: np.zeros(n_cols - 1),
        "large": lambda: generator.uniform(2, 5, n_cols - 1) * generator.choice([-1, 1], n_cols - 1),
    }[case["x_kind"]]()
    d = {
        "dense": lambda: generator.uniform(-1, 1, n_rows),
        "zero": lambda: np.zeros(n_rows),
        "large": lambda: generator.uniform(2, 5, n_rows) * generator.choice([-1, 1], n_rows),
    }[case["d_kind"]]()
    return x, d


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("additive", [False, True])
def test_pulsed_update_matches_naive(name, additive):
    case = CASES[name]
    generator = np.random.default_rng(zlib.crc32(name.encode()))
    conductance, reference, params = _random_layer(case["n_rows"], case["n_cols"], 1)
    x, d = _vectors(case, generator)
    g, weights, up, down = _run_kernel(conductance, reference, params, x, d, additive=additive)
    g_naive, up_naive, down_naive = _run_naive(conductance, reference, params, x, d, additive=additive)
    np.testing.assert_allclose(g, g_naive, rtol=1e-13, atol=1e-16)
    np.testing.assert_array_equal(up, up_naive)
    np.testing.assert_array_equal(down, down_naive)
    np.testing.assert_array_equal(weights, g - reference)
    if name == "zero input":
        # Only the bias column, driven by a constant 1, receives pulses.
        np.testing.assert_array_equal(g[:, :-1], conductance[:, :-1])
        assert up.sum() + down.sum() > 0
    if name == "zero error":
        np.testing.assert_array_equal(g, conductance)
        assert up.sum() + down.sum() == 0


def test_pulsed_update_at_bounds_matches_naive():
    conductance, reference, params = _random_layer(8, 9, 2)
    conductance[:4] = params["b_max"][:4]
    conductance[4:] = params["b_min"][4:]
    x, d = _vectors(CASES["saturated probability"] | {"n_rows": 8, "n_cols": 9}, np.random.default_rng(5))
    g, _, _, _ = _run_kernel(conductance, reference, params, x, d, bit_length=64)
    g_naive, _, _ = _run_naive(conductance, reference, params, x, d, bit_length=64)
    np.testing.assert_allclose(g, g_naive, rtol=1e-13, atol=1e-16)
    assert np.all(g <= params["b_max"])
    assert np.all(g >= params["b_min"])


def test_saturated_streams_give_bl_pulses_per_cell():
    conductance, reference, params = _random_layer(4, 6, 3)
    x = np.full(5, 3.0)
    d = np.array([2.0, -2.0, 5.0, -5.0])
    _, _, up, down = _run_kernel(conductance, reference, params, x, d, bit_length=7)
    np.testing.assert_array_equal(up, [42, 0, 42, 0])
    np.testing.assert_array_equal(down, [0, 42, 0, 42])


# --- expected value of the pulsed update -------------------------------------------------

# Tolerances in standard errors for the statistical checks below.
STATISTICAL_SIGMAS = 5.0


def _mean_update(n_updates, noise_std, seed=0):
    """Return the mean weight change per update and its standard error, far from the bounds."""
    n_rows, n_cols = 4, 6
    shape = (n_rows, n_cols)
    params = {
        "alpha_up": np.full(shape, 0.001),
        "alpha_down": np.full(shape, 0.001),
        "b_max": np.full(shape, 1e9),
        "b_min": np.full(shape, -1e9),
    }
    reference = np.zeros(shape)
    x = np.array([0.9, 0.5, 0.2, -0.3, 0.05])
    d = np.array([0.8, -0.4, 0.1, -0.7])
    steps = np.empty((n_updates, *shape))
    for k in range(n_updates):
        g, _, _, _ = _run_kernel(np.zeros(shape), reference, params, x, d, noise_std=noise_std, seed=seed, update_index=k)
        steps[k] = g
    mean = steps.mean(axis=0)
    error = steps.std(axis=0, ddof=1) / math.sqrt(n_updates)
    expected = 10 * 0.001 * np.outer(d, np.append(x, 1.0))  # BL Δw_min C² d xᵀ, C = 1
    return mean, error, expected


@pytest.mark.parametrize("noise_std", [0.0, 0.3])
def test_pulsed_update_mean_is_eta_d_x(noise_std):
    mean, error, expected = _mean_update(4000, noise_std)
    deviation = np.abs(mean - expected)
    assert np.all(deviation <= STATISTICAL_SIGMAS * error + 1e-12), (
        f"mean update deviates from η d xᵀ by more than {STATISTICAL_SIGMAS} standard errors: "
        f"max ratio {np.max(deviation / (error + 1e-30)):.2f}"
    )


def test_pulsed_update_mean_converges():
    # The largest deviation from η d xᵀ shrinks as the number of updates grows.
    deviations = []
    for n in (100, 1600):
        mean, _, expected = _mean_update(n, 0.3, seed=7)
        deviations.append(np.max(np.abs(mean - expected)))
    assert deviations[1] < deviations[0] / 2


# --- matrix-vector products ---------------------------------------------------------------


@pytest.mark.parametrize("col_bounds", [[0, 11], [0, 4, 11], [0, 1, 2, 11]])
def test_forward_matches_numpy(col_bounds):
    generator = np.random.default_rng(0)
    weights = generator.standard_normal((7, 11))
    x = generator.standard_normal(10)
    out = np.empty(7)
    weights_t = np.ascontiguousarray(weights.T)
    mvm.forward(weights_t=weights_t, x=x, bias=1.0, col_bounds=np.array(col_bounds), out_scale=2.5, out=out)
    np.testing.assert_allclose(out, 2.5 * weights @ np.append(x, 1.0), rtol=1e-12)
    batch = generator.standard_normal((5, 10))
    out_batch = np.empty((5, 7))
    mvm.forward_batch(weights_t=weights_t, inputs=batch, bias=1.0, col_bounds=np.array(col_bounds), out_scale=2.5, out=out_batch)
    np.testing.assert_allclose(out_batch, 2.5 * np.hstack([batch, np.ones((5, 1))]) @ weights.T, rtol=1e-12)


@pytest.mark.parametrize("row_bounds", [[0, 70], [0, 64, 70], [0, 3, 40, 70]])
def test_backward_matches_numpy(row_bounds):
    generator = np.random.default_rng(1)
    weights = generator.standard_normal((70, 130))
    d = generator.standard_normal(70)
    d[::3] = 0.0
    out = np.empty(130)
    mvm.backward(weights_t=np.ascontiguousarray(weights.T), d=d, row_bounds=np.array(row_bounds), out_scale=0.5, out=out)
    np.testing.assert_allclose(out, 0.5 * weights.T @ d, rtol=1e-12, atol=1e-12)


def test_exact_update_matches_outer_product():
    generator = np.random.default_rng(2)
    g = generator.standard_normal((5, 4))
    reference = generator.standard_normal((5, 4))
    weights_t = np.ascontiguousarray((g - reference).T)
    x = generator.standard_normal(3)
    x[1] = 0.0
    d = generator.standard_normal(5)
    expected = g + 0.1 * np.outer(d, np.append(x, 2.0))
    update.exact_update(conductance=g, reference=reference, weights_t=weights_t, x=x, bias=2.0, d=d, learning_rate=0.1)
    np.testing.assert_allclose(g, expected, rtol=1e-14)
    np.testing.assert_array_equal(weights_t.T, g - reference)
