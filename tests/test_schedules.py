"""Tests for diffjax.schedules: betas, the continuous view, inverses, grids, dtypes."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import xla_optimized

from diffjax import schedules as S

T = 1000
FLOAT32_GOLDEN = os.path.join(os.path.dirname(__file__), "data", "schedule_float32_golden.npz")

# Evaluate schedule methods under one cached jit (eager mode would compile every
# primitive for every new shape, which dominates the run time of these tests).
_call = jax.jit(lambda sched, name, *args: getattr(sched, name)(*args), static_argnums=1)


def ev(sched, name, *args):
    return np.asarray(_call(sched, name, *(jnp.asarray(a, jnp.float32) for a in args)))


def _discrete(name):
    return S.make_schedule(name, T)


ALL_SCHEDULES = {
    "linear": lambda: _discrete("linear"),
    "scaled_linear": lambda: _discrete("scaled_linear"),
    "cosine": lambda: _discrete("cosine"),
    "vp_linear": S.LinearVPSchedule,
    "vp_cosine": S.CosineVPSchedule,
}


def _times(schedule):
    """A grid of interior times from t_min_noise to t_max, including fractional ones."""
    if isinstance(schedule, S.DiscreteSchedule):
        return np.concatenate([np.arange(0, T, 7.0), np.linspace(0.0, T - 1.0, 101) + 0.37])[:-1]
    return np.linspace(schedule.t_min_noise, schedule.t_max, 201)


def float32_outputs(schedules_module):
    """Every float32 value a schedules module computes on fixed inputs, by name.

    The schedules are the three named discrete ones and the two continuous ones at their
    defaults; each method runs under ``jax.jit`` with the schedule both an argument
    (traced tables) and a closed-over constant. ``experiments/make_schedule_golden.py``
    stored this for the float32-only schedules (``tests/data/schedule_float32_golden.npz``).
    """
    m = schedules_module
    schedules = {name: m.make_schedule(name, T) for name in ("linear", "scaled_linear", "cosine")}
    schedules |= {"vp_linear": m.LinearVPSchedule(), "vp_cosine": m.CosineVPSchedule()}
    frac = np.linspace(0.0, 1.0, 97)
    lam = np.append(np.linspace(-15.0, 20.0, 71), np.inf).astype(np.float32)
    out = {}
    for name, sched in schedules.items():
        discrete = name in ("linear", "scaled_linear", "cosine")
        if discrete:
            ends = [[-2.0, -1.0, -0.5, 0.0, 0.25], [T - 1.0, T + 3.0]]  # clamped outside
            t = np.concatenate([ends[0], np.arange(0, T, 7) + 0.37, ends[1]])
        else:
            t = np.concatenate([[0.0, 1e-3], 1e-3 + (0.9946 - 1e-3) * frac, [1.0]])
        t = t.astype(np.float32)
        n = np.arange(0, T, 13, dtype=np.int32)

        def methods(s, t, lam, n, discrete=discrete):
            values = {
                f: getattr(s, f)(t) for f in ("alpha", "sigma", "log_snr", "alpha_bar", "log_alpha")
            }
            values["t_from_log_snr"] = s.t_from_log_snr(lam)
            if discrete:
                values |= {f"int_{f}": getattr(s, f)(n) for f in ("alpha", "sigma", "log_snr")}
                values["posterior_variance"] = s.posterior_variance(n, n - 1)
                values["posterior_variance_skip"] = s.posterior_variance(n + 10, n - 3)
                values["to_continuous_time"] = s.to_continuous_time(n)
                values["from_continuous_time"] = s.from_continuous_time(t / T)
                values["betas"] = s.betas
            return values

        traced = jax.jit(methods, static_argnames="discrete")(sched, t, lam, n)
        constant = jax.jit(lambda t, lam, n, s=sched: methods(s, t, lam, n))(t, lam, n)
        for mode, values in (("traced", traced), ("constant", constant)):
            out |= {f"{name}/{mode}/{f}": np.asarray(v) for f, v in values.items()}
    return out


# ----------------------------------------------------------------------------- betas


def test_linear_betas():
    b = S.linear_betas()
    assert b.shape == (T,)
    np.testing.assert_allclose([b[0], b[-1]], [1e-4, 0.02])
    np.testing.assert_allclose(np.diff(b), (0.02 - 1e-4) / (T - 1))


def test_scaled_linear_betas_are_linear_in_sqrt():
    b = S.scaled_linear_betas()
    np.testing.assert_allclose([b[0], b[-1]], [0.00085, 0.012])
    np.testing.assert_allclose(np.diff(np.sqrt(b)), (np.sqrt(0.012) - np.sqrt(0.00085)) / (T - 1))


def test_cosine_betas_cap_and_alpha_bar():
    b = S.cosine_betas()
    assert b.max() == pytest.approx(0.999)
    assert np.all(b <= 0.999)
    f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
    ac = np.cumprod(1 - b)
    uncapped = b < 0.999
    np.testing.assert_allclose(ac[uncapped], (f[1:] / f[0])[uncapped], rtol=1e-10)


def test_discrete_cosine_matches_continuous_cosine_at_dpm_solver_times():
    """DPM-Solver's discrete->continuous map t = (n + 1) / T links the two cosines."""
    d, c = _discrete("cosine"), S.CosineVPSchedule()
    n = np.arange(T - 1)  # the last beta is capped
    np.testing.assert_allclose(
        ev(d, "alpha_bar", n),
        ev(c, "alpha_bar", ev(d, "to_continuous_time", n)),
        rtol=2e-4,
        atol=1e-7,
    )


def test_betas_roundtrip_through_schedule():
    betas = S.linear_betas()
    sched = S.DiscreteSchedule.from_betas(betas)
    np.testing.assert_allclose(sched.betas, betas, rtol=1e-4)
    np.testing.assert_allclose(sched.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-6)
    assert sched.num_timesteps == T
    sched2 = S.DiscreteSchedule.from_alphas_cumprod(np.cumprod(1 - betas))
    chex.assert_trees_all_close(sched, sched2, rtol=1e-6)


# ------------------------------------------------------------------ continuous view


@pytest.mark.parametrize("name", sorted(ALL_SCHEDULES))
def test_variance_preserving(name):
    sched = ALL_SCHEDULES[name]()
    t = _times(sched)
    a, s = (
        np.asarray(ev(sched, "alpha", t), np.float64),
        np.asarray(ev(sched, "sigma", t), np.float64),
    )
    np.testing.assert_allclose(a**2 + s**2, 1.0, atol=2e-6)
    np.testing.assert_allclose(ev(sched, "alpha_bar", t), a**2, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(ALL_SCHEDULES))
def test_log_snr_strictly_decreasing_and_consistent(name):
    sched = ALL_SCHEDULES[name]()
    t = np.sort(_times(sched))
    lam = np.asarray(ev(sched, "log_snr", t))
    assert np.all(np.diff(lam) < 0)
    a, s = np.asarray(ev(sched, "alpha", t)), np.asarray(ev(sched, "sigma", t))
    np.testing.assert_allclose(lam, 2 * np.log(a / s), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(ALL_SCHEDULES))
def test_log_snr_inverse_roundtrip(name):
    sched = ALL_SCHEDULES[name]()
    t = _times(sched)
    t_back = np.asarray(ev(sched, "t_from_log_snr", ev(sched, "log_snr", t)))
    # float32 log-SNR -> time; the tolerance is relative to the time range.
    span = sched.t_max - sched.t_min_noise
    np.testing.assert_allclose(t_back, t, atol=2e-4 * span)
    lam = np.linspace(float(ev(sched, "log_snr", t[-1])), float(ev(sched, "log_snr", t[0])), 37)
    np.testing.assert_allclose(
        ev(sched, "log_snr", ev(sched, "t_from_log_snr", lam)), lam, atol=2e-3
    )


def test_discrete_exact_at_integers_and_clean_point():
    sched = _discrete("linear")
    n = np.arange(T)
    np.testing.assert_allclose(ev(sched, "alpha_bar", n), sched.alphas_cumprod, rtol=1e-6)
    assert float(ev(sched, "alpha_bar", -1)) == 1.0
    assert float(ev(sched, "sigma", -1)) == 0.0
    assert float(ev(sched, "log_snr", -1)) == np.inf


def test_discrete_log_alpha_piecewise_linear_dpm_solver_mapping():
    sched = _discrete("linear")
    n = np.arange(T - 1)
    mid = 0.5 * (ev(sched, "log_alpha", n) + ev(sched, "log_alpha", n + 1))
    np.testing.assert_allclose(ev(sched, "log_alpha", n + 0.5), mid, rtol=1e-5, atol=1e-7)
    # t_n = (n + 1) / T and back; t = -1 <-> continuous 0.
    np.testing.assert_allclose(ev(sched, "to_continuous_time", n), (n + 1) / T, rtol=1e-6)
    np.testing.assert_allclose(
        ev(sched, "from_continuous_time", ev(sched, "to_continuous_time", n)), n, atol=1e-3
    )
    assert float(ev(sched, "to_continuous_time", -1)) == 0.0
    # first segment interpolates towards the clean point: log alpha(-0.5) = log alpha_0 / 2
    np.testing.assert_allclose(
        ev(sched, "log_alpha", -0.5), 0.5 * ev(sched, "log_alpha", 0), rtol=1e-6
    )


def test_linear_vp_closed_form():
    sched = S.LinearVPSchedule()
    t = np.linspace(1e-3, 1.0, 11)
    expected = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    np.testing.assert_allclose(ev(sched, "log_alpha", t), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="beta_min"):
        S.LinearVPSchedule(beta_min=5.0, beta_max=1.0)


def test_ddpm_posterior_variance_golden():
    sched = _discrete("linear")
    assert abs(float(ev(sched, "posterior_variance", 487, 486)) - 0.00979) < 1e-5
    assert abs(float(ev(sched, "posterior_variance", 999, 998)) - 0.02) < 1e-5
    # Skipped-grid (DDIM eta = 1) variances, diffusers' DDIM _get_variance values.
    assert abs(float(ev(sched, "posterior_variance", 420, 400)) - 0.14771) < 1e-5
    assert abs(float(ev(sched, "posterior_variance", 980, 960)) - 0.32460) < 1e-5
    assert float(ev(sched, "posterior_variance", 0, -1)) == 0.0


def test_schedule_is_a_pytree_usable_under_jit():
    sched = _discrete("linear")

    @jax.jit
    def f(s, t):
        return s.alpha(t) ** 2 + s.sigma(t) ** 2

    np.testing.assert_allclose(f(sched, jnp.array([0.0, 500.5, 999.0])), 1.0, atol=1e-6)
    leaves = jax.tree_util.tree_leaves(sched)
    assert len(leaves) == 2 and all(leaf.dtype == jnp.float32 for leaf in leaves)


# ------------------------------------------------------------- contract and dtypes


@pytest.mark.parametrize("name", sorted(ALL_SCHEDULES))
def test_schedules_satisfy_the_vp_protocol(name):
    """t_clean is the clean point (sigma = 0) and t_min_noise is noisy, in both dtypes."""
    sched = ALL_SCHEDULES[name]()
    assert isinstance(sched, S.VPSchedule)
    assert sched.t_clean < sched.t_min_noise < sched.t_max
    assert float(ev(sched, "sigma", sched.t_clean)) == 0.0
    assert float(ev(sched, "alpha", sched.t_clean)) == 1.0
    assert float(ev(sched, "log_snr", sched.t_clean)) == np.inf
    assert float(ev(sched, "sigma", sched.t_min_noise)) > 0.0
    with jax.enable_x64(True):
        for t, zero in ((sched.t_clean, True), (sched.t_min_noise, False)):
            sigma = sched.sigma(jnp.float64(t))
            assert sigma.dtype == jnp.float64 and (float(sigma) == 0.0) == zero


def test_protocol_names_replace_t_min():
    assert not isinstance(object(), S.VPSchedule)
    for sched in (_discrete("linear"), S.LinearVPSchedule(), S.CosineVPSchedule()):
        assert not hasattr(sched, "t_min")
    assert (S.make_schedule("cosine", 20).t_clean, S.LinearVPSchedule().t_clean) == (-1.0, 0.0)
    assert (S.make_schedule("cosine", 20).t_min_noise, S.CosineVPSchedule().t_min_noise) == (
        0.0,
        1e-3,
    )
    with pytest.raises(ValueError, match="t_min_noise"):
        S.LinearVPSchedule(t_min_noise=0.0)
    with pytest.raises(ValueError, match="t_min_noise"):
        S.CosineVPSchedule(t_min_noise=1.0)


@pytest.mark.parametrize("x64", [False, True])
def test_float32_values_unchanged(x64):
    """float32 (and integer) inputs give bit for bit what the float32-only module gave.

    The one exception is the continuous cosine at its clean point t = 0, where the
    float32-only module left log alpha = -1.7e-8 (sigma = 1.8e-4); it is exact now.
    """
    golden = np.load(FLOAT32_GOLDEN)
    with jax.enable_x64(x64), xla_optimized():  # bit for bit: XLA as users compile it
        outputs = float32_outputs(S)
    assert sorted(outputs) == sorted(golden.files)
    clean = {"alpha": 1.0, "sigma": 0.0, "log_snr": np.inf, "alpha_bar": 1.0, "log_alpha": 0.0}
    for key, value in outputs.items():
        expected = golden[key]
        if x64 and key.endswith("/betas"):  # no input: the float64 tables' own dtype
            assert value.dtype == np.float64
            np.testing.assert_allclose(value, expected, rtol=1e-4)
            continue
        assert value.dtype == expected.dtype == np.float32, key
        name, _, method = key.split("/")
        if name == "vp_cosine" and method in clean:
            assert value[0] == clean[method], key  # t = 0
            value, expected = value[1:], expected[1:]
        np.testing.assert_array_equal(value, expected, err_msg=key)


@pytest.mark.parametrize("name", sorted(ALL_SCHEDULES))
def test_float64_in_float64_out(name):
    """Under jax_enable_x64 float64 times give float64 values, integers float32."""
    with jax.enable_x64(True):
        sched = ALL_SCHEDULES[name]()  # a discrete schedule built here keeps float64 tables
        t = jnp.asarray(_times(sched), jnp.float64)
        for method in ("alpha", "sigma", "log_snr", "alpha_bar", "log_alpha", "t_from_log_snr"):
            fn = getattr(sched, method)
            assert jax.eval_shape(fn, t).dtype == jnp.float64, method
            assert jax.eval_shape(fn, t.astype(jnp.float32)).dtype == jnp.float32, method
            assert jax.eval_shape(fn, jnp.int32(0)).dtype == jnp.float32, method

        def values(t):
            lam = sched.log_snr(t)
            return lam, sched.t_from_log_snr(lam), sched.alpha(t), sched.sigma(t)

        lam, t_back, a, s = (np.asarray(v) for v in jax.jit(values)(t))
        np.testing.assert_allclose(t_back, t, rtol=1e-9, atol=1e-9 * sched.t_max)
        np.testing.assert_allclose(a**2 + s**2, 1.0, atol=1e-14)
        np.testing.assert_allclose(lam, 2 * np.log(a / s), rtol=1e-12, atol=1e-12)


def test_float64_discrete_tables_and_closed_form():
    with jax.enable_x64(True):
        sched = _discrete("linear")
        assert sched.log_alphas_cumprod.dtype == jnp.float64
        n = jnp.arange(T, dtype=jnp.float64)
        np.testing.assert_allclose(
            jax.jit(sched.alpha_bar)(n), np.cumprod(1 - S.linear_betas()), rtol=1e-13
        )
        assert jax.eval_shape(sched.to_continuous_time, n).dtype == jnp.float64
        assert jax.eval_shape(sched.posterior_variance, n[1:], n[:-1]).dtype == jnp.float64
        explicit = S.make_schedule("linear", T, dtype=jnp.float32)
        assert explicit.log_alphas_cumprod.dtype == jnp.float32
        assert jax.eval_shape(explicit.alpha, n).dtype == jnp.float64  # float32 table
        t = np.linspace(1e-3, 1.0, 11)
        expected = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
        log_alpha = jax.jit(S.LinearVPSchedule().log_alpha)(jnp.asarray(t, jnp.float64))
        np.testing.assert_allclose(log_alpha, expected, rtol=1e-15)


# ------------------------------------------------------------------------- grids


def test_leading_grid():
    g = S.leading_timesteps(T, 50, offset=1)
    np.testing.assert_array_equal(g, np.arange(981, 0, -20))
    assert g[0] == 981 and g[-1] == 1 and len(g) == 50
    np.testing.assert_array_equal(S.leading_timesteps(T, 10), np.arange(900, -1, -100))
    np.testing.assert_array_equal(S.leading_timesteps(T, 5, offset=1), [801, 601, 401, 201, 1])


def test_trailing_grid():
    np.testing.assert_array_equal(S.trailing_timesteps(T, 10), np.arange(999, 0, -100))


def test_linspace_grid_rounds_half_to_even():
    np.testing.assert_array_equal(
        S.linspace_timesteps(T, 10), [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    )


def test_quadratic_grid():
    g = S.quadratic_timesteps(T, 10)
    ascending = [0, 9, 39, 88, 158, 246, 355, 483, 632, 800]
    np.testing.assert_array_equal(g[::-1], ascending)  # as listed in docs/design.md
    np.testing.assert_array_equal(g, ascending[::-1])  # sampler order
    g50 = S.quadratic_timesteps(T, 50)  # DDIM's truncation repeats 0 at 50 steps
    assert len(g50) == 50 and np.all(np.diff(g50) <= 0)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_log_snr_uniform_grid(name):
    sched = _discrete(name)
    g = S.log_snr_uniform_timesteps(sched, 20)
    assert g.shape == (20,) and g[0] == T - 1 and np.all(np.diff(g) < 0) and g[-1] > 0
    lam = np.append(np.asarray(ev(sched, "log_snr", g), np.float64), float(ev(sched, "log_snr", 0)))
    np.testing.assert_allclose(np.diff(lam), np.mean(np.diff(lam)), rtol=1e-3)


def test_log_snr_uniform_integer_grid():
    sched = _discrete("linear")
    g = S.log_snr_uniform_timesteps(sched, 10, round_to_int=True)
    assert g.dtype == np.int64 and g[0] == T - 1 and np.all(np.diff(g) < 0)
    with pytest.raises(ValueError, match="num_steps"):
        S.log_snr_uniform_timesteps(sched, 100, round_to_int=True)


def test_with_final_timestep():
    g = S.with_final_timestep(S.leading_timesteps(T, 10))
    np.testing.assert_array_equal(g, [900, 800, 700, 600, 500, 400, 300, 200, 100, 0, -1])
    np.testing.assert_array_equal(S.with_final_timestep([5, 3], final=0), [5, 3, 0])


# ------------------------------------------------------------------------ errors


def test_unknown_schedule_name():
    with pytest.raises(ValueError, match="name='sigmoid'"):
        S.make_schedule("sigmoid", T)


@pytest.mark.parametrize(
    "fn", [S.leading_timesteps, S.trailing_timesteps, S.linspace_timesteps, S.quadratic_timesteps]
)
def test_grid_more_steps_than_schedule(fn):
    with pytest.raises(ValueError, match="num_steps"):
        fn(T, T + 1)
    with pytest.raises(ValueError, match="num_steps"):
        fn(T, 0)


def test_grid_errors():
    with pytest.raises(ValueError, match="num_steps"):
        S.log_snr_uniform_timesteps(_discrete("linear"), T + 1)
    with pytest.raises(ValueError, match="offset"):
        S.leading_timesteps(T, 10, offset=100)
    with pytest.raises(TypeError, match="num_steps"):
        S.trailing_timesteps(T, 10.0)


def test_bad_betas():
    with pytest.raises(ValueError, match="beta_start"):
        S.linear_betas(T, beta_start=-1.0)
    with pytest.raises(ValueError, match="num_timesteps"):
        S.linear_betas(0)
    with pytest.raises(ValueError, match="betas"):
        S.DiscreteSchedule.from_betas(np.array([0.1, 1.5]))
    with pytest.raises(ValueError, match="alphas_cumprod"):
        S.DiscreteSchedule.from_alphas_cumprod(np.array([0.5, 0.9]))
