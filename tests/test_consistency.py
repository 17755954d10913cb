"""Consistency models: the parameterization, the training levels and losses, the sampler.

The regression tests pin the bugs public ports have had: the boundary condition at
sigma_min, the square root in c_in, the sign of the lognormal mean, the data dimension
of the pseudo-Huber constant, the dropout key shared by the online and target passes,
and iCT's curriculum against the paper's formula (Song & Dhariwal 2023, Eq. 11).
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from harness import GAUSSIAN, KEY, LINEAR, MU

from diffjax.consistency import (
    ConsistencyParameterization,
    LevelPair,
    boundary_coefficients,
    c_in,
    c_out,
    c_skip,
    consistency_denoiser,
    consistency_distance,
    consistency_function,
    consistency_loss,
    ect_lower_level,
    huber_constant,
    ict_num_levels,
    karras_levels,
    lognormal_level_logits,
    network_time,
    pair_weight,
    sample_lognormal_level,
)
from diffjax.nn import UNet
from diffjax.parameterization import Denoised, ScheduledDenoiser
from diffjax.samplers import (
    consistency_multistep,
    ddim,
    default_consistency_levels,
    dpm_solver_multistep,
    dpm_solver_singlestep,
    edm_heun,
    edm_sigma_range,
    karras_sigmas,
    ode_step,
    sample,
)
from diffjax.training.consistency_step import ConsistencyObjective, student_consistency_fn

PARAM = ConsistencyParameterization.for_schedule(LINEAR)


def garbage_denoiser(schedule):
    """A denoiser whose x0 has nothing to do with x (what an untrained network says)."""

    def fn(x, t, cond=None):
        x0 = 1e3 * jnp.sin(7.0 * x) + 5.0
        return Denoised(eps=jnp.zeros_like(x), x0=x0)

    return ScheduledDenoiser(fn, schedule)


# ----------------------------------------------------------------------- parameterization


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_boundary_condition_holds_exactly_at_sigma_min(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        x = jax.random.normal(KEY, (4, 3, 3, 2), dtype) * 2.0
        f = consistency_function(garbage_denoiser(LINEAR), LINEAR, PARAM)
        at_boundary = f(x, jnp.full((4,), PARAM.sigma_min, dtype))
        chex.assert_trees_all_equal(at_boundary, x)  # bit for bit, whatever the network says
        a, b = boundary_coefficients(jnp.asarray(PARAM.sigma_min, dtype), PARAM.sigma_min, 0.5)
        assert float(a) == 1.0 and float(b) == 0.0
        above = f(x, jnp.full((4,), 2 * PARAM.sigma_min, dtype))
        assert float(jnp.max(jnp.abs(above - x))) > 1.0


def test_the_denoiser_form_is_the_papers_c_skip_and_c_out():
    """f = a x + b D equals c_skip x + c_out F with F EDM's raw output (float64)."""
    with jax.enable_x64(True):
        sigma = jnp.asarray([0.002, 0.01, 0.3, 1.0, 7.0, 80.0], jnp.float64)
        x = jnp.linspace(-3.0, 3.0, 6, dtype=jnp.float64)
        d = jnp.cos(x) * 0.7  # any denoiser output
        lo, sd = 0.002, 0.5
        skip_edm = sd**2 / (sigma**2 + sd**2)
        out_edm = sigma * sd / jnp.sqrt(sigma**2 + sd**2)
        raw = (d - skip_edm * x) / out_edm  # the F with D = c_skip^EDM x + c_out^EDM F
        expected = c_skip(sigma, lo, sd) * x + c_out(sigma, lo, sd) * raw
        a, b = boundary_coefficients(sigma, lo, sd)
        np.testing.assert_allclose(a * x + b * d, expected, rtol=1e-12, atol=1e-14)
        # Song et al. 2023, App. C, written out.
        np.testing.assert_allclose(c_skip(sigma, lo, sd), sd**2 / ((sigma - lo) ** 2 + sd**2))
        np.testing.assert_allclose(
            c_out(sigma, lo, sd), sd * (sigma - lo) / jnp.sqrt(sigma**2 + sd**2)
        )


def test_c_in_uses_the_square_root_and_the_network_sees_the_vp_sample():
    sigma = jnp.asarray([0.01, 0.5, 2.0, 80.0])
    np.testing.assert_allclose(c_in(sigma), 1.0 / np.sqrt(np.asarray(sigma) ** 2 + 1.0), rtol=1e-6)
    assert not np.allclose(c_in(sigma), 1.0 / (np.asarray(sigma) ** 2 + 1.0))
    seen = {}

    def fn(x_t, t, cond=None):
        seen["x_t"], seen["t"] = x_t, t
        return Denoised(eps=jnp.zeros_like(x_t), x0=jnp.zeros_like(x_t))

    x = jnp.ones((4, 2))
    consistency_function(ScheduledDenoiser(fn, LINEAR), LINEAR, PARAM)(x, sigma)
    np.testing.assert_allclose(seen["x_t"][:, 0], c_in(sigma), rtol=2e-4)
    np.testing.assert_allclose(LINEAR.log_snr(seen["t"]), -2 * np.log(sigma), rtol=1e-4, atol=1e-4)


def test_network_time_is_the_schedules_time_of_the_noise_level():
    lo, hi = edm_sigma_range(LINEAR)
    assert (PARAM.sigma_min, PARAM.sigma_max) == (lo, 80.0)  # the papers' sigma_max
    whole = ConsistencyParameterization.for_schedule(LINEAR, sigma_max=None)
    assert (whole.sigma_min, whole.sigma_max) == (lo, hi)
    t = network_time(LINEAR, jnp.asarray([lo, 1.0, hi]))
    np.testing.assert_allclose(t, [0.0, float(t[1]), LINEAR.num_timesteps - 1], atol=2e-3)


def test_parameterization_refuses_levels_outside_the_schedule():
    with pytest.raises(ValueError, match="sigma_min=0.001 lies outside"):
        ConsistencyParameterization.for_schedule(LINEAR, sigma_min=0.001)
    with pytest.raises(ValueError, match="sigma_max=1000.0 lies outside"):
        ConsistencyParameterization.for_schedule(LINEAR, sigma_max=1000.0)
    with pytest.raises(ValueError, match="sigma_max=1000.0 lies outside"):
        consistency_multistep(LINEAR, 1, sigma_max=1000.0)
    with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
        ConsistencyParameterization(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="sigma_data"):
        ConsistencyParameterization(0.01, 80.0, sigma_data=0.0)


# ------------------------------------------------------------------ levels and curriculum


def test_ict_curriculum_matches_the_papers_formula():
    # K = 400,000, s0 = 10, s1 = 1280: K' = floor(K / (log2(128) + 1)) = 50,000.
    K = 400_000
    expected = {0: 11, 49_999: 11, 50_000: 21, 100_000: 41, 149_999: 41, 150_000: 81,
                300_000: 641, 349_999: 641, 350_000: 1281, 399_999: 1281}
    got = {k: int(ict_num_levels(k, K)) for k in expected}
    assert got == expected
    # Traced step (inside the jitted train step) gives the same.
    traced = jax.jit(lambda k: ict_num_levels(k, K))(jnp.asarray(list(expected)))
    np.testing.assert_array_equal(traced, list(expected.values()))
    # A run shorter than the doublings: K' = floor(100 / 8) = 12.
    assert [int(ict_num_levels(k, 100)) for k in (0, 11, 12, 95, 99)] == [11, 11, 21, 1281, 1281]


def test_karras_levels_ascend_over_the_range_and_match_the_sampler_grid():
    n = 18
    levels = karras_levels(jnp.arange(n), n, PARAM.sigma_min, PARAM.sigma_max)
    np.testing.assert_allclose(
        levels[::-1], karras_sigmas(n, PARAM.sigma_min, PARAM.sigma_max)[:-1], rtol=1e-5
    )
    assert np.all(np.diff(np.asarray(levels)) > 0)


def test_lognormal_sampling_is_centred_at_minus_1_1():
    keys = jax.random.split(KEY, 20_000)
    sigma = jax.vmap(lambda k: sample_lognormal_level(k, 0.002, 80.0))(keys)
    assert abs(float(jnp.median(jnp.log(sigma))) + 1.1) < 0.06  # P_mean = -1.1, not +1.1
    assert float(jnp.min(sigma)) >= 0.002 and float(jnp.max(sigma)) <= 80.0
    # iCT's discretised lognormal over 1281 Karras levels: the median pair sits at -1.1 too.
    probs = np.asarray(jax.nn.softmax(lognormal_level_logits(1281, 1281, 0.002, 80.0)))
    mids = np.log(np.asarray(karras_levels(jnp.arange(1280) + 0.5, 1281, 0.002, 80.0)))
    median = mids[np.searchsorted(np.cumsum(probs), 0.5)]
    assert abs(median + 1.1) < 0.05
    # Indices past the current N get no mass (a traced N over a static array).
    probs11 = np.asarray(jax.nn.softmax(lognormal_level_logits(11, 1281, 0.002, 80.0)))
    assert probs11[10:].sum() == 0.0 and abs(probs11[:10].sum() - 1.0) < 1e-6


def test_ect_lower_level_follows_the_sigmoid_mapping():
    t = jnp.asarray([0.05, 1.0, 10.0, 80.0])
    for stage in (0, 3, 12):
        q = 2.0 ** -(stage + 1)
        expected = np.maximum(np.asarray(t) * (1 - q * (1 + 8 / (1 + np.exp(np.asarray(t))))), 0)
        np.testing.assert_allclose(ect_lower_level(t, stage), expected, rtol=1e-5)
    # Stage 0 near t = 0 clamps at 0 (the denoising loss); late stages approach r = t.
    assert float(ect_lower_level(0.05, 0)) == 0.0
    np.testing.assert_allclose(ect_lower_level(t, 20), t, rtol=1e-4)


# --------------------------------------------------------------------- distances, weights


def test_huber_constant_uses_the_full_data_dimension():
    assert huber_constant((32, 32, 3)) == pytest.approx(0.00054 * math.sqrt(3072))
    assert huber_constant((32, 32, 3)) != pytest.approx(0.00054 * math.sqrt(1024))
    objective = ConsistencyObjective(method="ict", param=PARAM)
    assert objective.huber_c_for((28, 28, 1)) == pytest.approx(0.00054 * 28)
    assert ConsistencyObjective("ict", PARAM, huber_c=0.03).huber_c_for((8, 8, 1)) == 0.03


def test_distances_and_weights():
    a = jnp.asarray([[3.0, 4.0], [0.0, 0.0]])
    b = jnp.zeros_like(a)
    np.testing.assert_allclose(consistency_distance(a, b, "l2"), [25.0, 0.0])
    np.testing.assert_allclose(consistency_distance(a, b, "l1"), [7.0, 0.0])
    np.testing.assert_allclose(consistency_distance(a, b, "l2_norm"), [5.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(
        consistency_distance(a, b, "pseudo_huber", 0.5), [np.sqrt(25.25) - 0.5, 0.0], rtol=1e-6
    )
    with pytest.raises(ValueError, match="huber_c > 0"):
        consistency_distance(a, b, "pseudo_huber", 0.0)
    with pytest.raises(ValueError, match="distance"):
        consistency_distance(a, b, "lpips")
    hi, lo = jnp.asarray([2.0]), jnp.asarray([1.5])
    np.testing.assert_allclose(pair_weight("reciprocal_gap", hi, lo), [2.0])
    np.testing.assert_allclose(pair_weight("snr_plus_k", hi, lo), [0.25 + 4.0])
    np.testing.assert_allclose(pair_weight("uniform", hi, lo), [1.0])


def test_online_and_target_passes_share_one_dropout_mask():
    model = UNet(base_channels=8, channel_mults=(1,), num_res_blocks=1, attention_resolutions=(),
                 dropout=0.5, num_classes=None)
    x = jax.random.normal(KEY, (3, 8, 8, 1))
    t = jnp.zeros((1,))
    params = model.init({"params": KEY}, x[:1], t, None, train=False)["params"]
    leaves, tree = jax.tree.flatten(params)  # off the zero-initialised output layer
    noise = jax.random.split(jax.random.key(5), len(leaves))
    params = jax.tree.unflatten(
        tree, [p + 0.2 * jax.random.normal(k, p.shape) for p, k in zip(leaves, noise, strict=True)]
    )
    f = student_consistency_fn(model, params, LINEAR, PARAM, "eps")
    sigma = jnp.asarray([0.5, 2.0, 10.0])
    keys = jax.random.split(jax.random.key(3), 3)
    other = jax.random.split(jax.random.key(4), 3)
    chex.assert_trees_all_equal(f(x, sigma, None, keys), f(x, sigma, None, keys))
    assert not np.allclose(f(x, sigma, None, keys), f(x, sigma, None, other))
    # Same inputs for both passes: the loss is exactly zero only with one shared mask.
    pair = LevelPair(x_hi=x, sigma_hi=sigma, x_lo=x, sigma_lo=sigma)
    loss, dist = consistency_loss(f, f, pair, None, keys, distance="l2", weighting="uniform")
    assert float(loss) == 0.0
    chex.assert_shape(dist, (3,))


def test_objective_refuses_bad_options():
    with pytest.raises(ValueError, match="method"):
        ConsistencyObjective("ctm", PARAM)
    with pytest.raises(ValueError, match="target_ema=0.5 is CD's"):
        ConsistencyObjective("ict", PARAM, target_ema=0.5)
    with pytest.raises(ValueError, match="num_scales"):
        ConsistencyObjective("cd", PARAM, num_scales=1)
    with pytest.raises(ValueError, match="teacher_sampler"):
        ConsistencyObjective("cd", PARAM, teacher_sampler="euler")


# ------------------------------------------------------------------------------ sampling


def exact_consistency_denoiser(mean, cov, schedule, sigma_min):
    """The exact consistency function of Gaussian data N(mean, cov), as a denoiser.

    In EDM units the probability flow keeps ``(x - mu) / sqrt(l + sigma^2)`` constant per
    eigen-coordinate, so ``f*(x, sigma) = mu + V diag(sqrt((l + sigma_min^2) / (l +
    sigma^2))) V^T (x - mu)``.
    """
    lam, vecs = np.linalg.eigh(np.asarray(cov))
    lam, vecs, mean = jnp.asarray(lam), jnp.asarray(vecs), jnp.asarray(mean)

    def fn(x_t, t, cond=None):
        t = jnp.broadcast_to(t, (x_t.shape[0],))
        sigma = jnp.exp(-0.5 * schedule.log_snr(t))[:, None]
        x = x_t / schedule.alpha(t)[:, None]
        gain = jnp.sqrt((lam + sigma_min**2) / (lam + sigma**2))
        x0 = mean + ((x - mean) @ vecs * gain) @ vecs.T
        return Denoised(eps=jnp.zeros_like(x_t), x0=x0)

    return ScheduledDenoiser(fn, schedule)


def multistep_law(levels, sigma_max, mean, cov, sigma_min):
    """The exact output law of Algorithm 1 with the exact f*, from x_T ~ N(0, I) (VP)."""
    lam, vecs = np.linalg.eigh(cov)

    def gain(sigma):
        return vecs @ np.diag(np.sqrt((lam + sigma_min**2) / (lam + sigma**2))) @ vecs.T

    G = gain(sigma_max)
    m = mean - G @ mean
    C = G @ G.T * (1 + sigma_max**2)  # x_T / alpha_max has variance 1 + sigma_max^2
    for tau in levels:
        G = gain(tau)
        m = mean + G @ (m - mean)
        C = G @ (C + (tau**2 - sigma_min**2) * np.eye(len(mean))) @ G.T
    return m, C


@pytest.mark.parametrize("num_steps", [1, 2, 4])
def test_multistep_sampling_with_the_exact_consistency_function(num_steps):
    cov = np.array([[1.0, 0.6], [0.6, 0.5]]) * 0.2
    lo, hi = PARAM.sigma_min, PARAM.sigma_max
    den = exact_consistency_denoiser(MU, cov, LINEAR, lo)
    sampler = consistency_multistep(LINEAR, num_steps)
    assert sampler.nfe == num_steps and sampler.num_steps == num_steps and sampler.order is None
    levels = default_consistency_levels(num_steps)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(key):
        x_T = jax.random.normal(key, (40_000, 2))
        return sample(sampler, den, x_T, jax.random.fold_in(key, 1))

    chex.clear_trace_counter()
    first = run(jax.random.key(0))
    run(jax.random.key(1))  # another key: no retrace
    mean, cov_out = multistep_law(levels, hi, MU, cov, lo)
    np.testing.assert_allclose(np.mean(first, 0), mean, atol=0.015)
    np.testing.assert_allclose(np.cov(np.asarray(first).T), cov_out, rtol=0.05, atol=0.005)
    if num_steps > 1:  # the re-noised steps reach the data's law itself (+ sigma_min^2)
        np.testing.assert_allclose(cov_out, cov + lo**2 * np.eye(2), rtol=1e-4)


def test_one_step_sampling_is_f_at_the_largest_level():
    den = consistency_denoiser(GAUSSIAN.denoiser(LINEAR), LINEAR, PARAM)
    x_T = jax.random.normal(KEY, (5, 2))
    out = sample(consistency_multistep(LINEAR, 1), den, x_T, KEY)
    alpha = LINEAR.alpha(network_time(LINEAR, PARAM.sigma_max))
    np.testing.assert_allclose(alpha, 1 / math.sqrt(1 + 80.0**2), rtol=1e-4)
    f = consistency_function(GAUSSIAN.denoiser(LINEAR), LINEAR, PARAM)
    np.testing.assert_allclose(out, f(x_T / alpha, jnp.full((5,), PARAM.sigma_max)), rtol=1e-4,
                               atol=1e-5)
    # The schedule's whole range starts at t_max.
    whole = consistency_multistep(LINEAR, 1, sigma_max=edm_sigma_range(LINEAR)[1])
    param = ConsistencyParameterization.for_schedule(LINEAR, sigma_max=None)
    out = sample(whole, consistency_denoiser(GAUSSIAN.denoiser(LINEAR), LINEAR, param), x_T, KEY)
    f = consistency_function(GAUSSIAN.denoiser(LINEAR), LINEAR, param)
    want = f(x_T / LINEAR.alpha(LINEAR.t_max), jnp.full((5,), param.sigma_max))
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_default_levels():
    assert default_consistency_levels(1).shape == (0,)
    np.testing.assert_allclose(default_consistency_levels(2), [0.821])
    levels = default_consistency_levels(4)
    np.testing.assert_allclose(levels, [0.821 * 3, 0.821, 0.821 / 3], rtol=1e-12)


def test_multistep_sampler_refuses_bad_levels():
    with pytest.raises(ValueError, match="num_steps"):
        consistency_multistep(LINEAR, 0)
    with pytest.raises(ValueError, match="give num_steps or sigmas"):
        consistency_multistep(LINEAR)
    with pytest.raises(ValueError, match="strictly decreasing"):
        consistency_multistep(LINEAR, sigmas=[0.5, 2.0])
    with pytest.raises(ValueError, match="strictly inside"):
        consistency_multistep(LINEAR, sigmas=[500.0, 2.0])
    with pytest.raises(ValueError, match="strictly inside"):
        consistency_multistep(LINEAR, sigmas=[2.0, 0.001])
    with pytest.raises(ValueError, match="disagrees with sigmas"):
        consistency_multistep(LINEAR, 4, sigmas=[2.0, 0.5])
    with pytest.raises(ValueError, match="1-D"):
        consistency_multistep(LINEAR, sigmas=[[2.0]])
    with pytest.raises(ValueError, match="static"):
        jax.jit(lambda s: consistency_multistep(LINEAR, sigmas=s).num_steps)(jnp.ones(2))
    custom = consistency_multistep(LINEAR, sigmas=[5.0, 1.0, 0.2])
    assert custom.nfe == 4


# -------------------------------------------------------------------------- the ODE step


def one_step_samplers():
    lo, hi = edm_sigma_range(LINEAR)
    sig = karras_sigmas(6, lo, hi)[:-1]
    times = np.asarray(network_time(LINEAR, jnp.asarray(sig)), np.float64)
    times = np.clip(times, 0.0, LINEAR.num_timesteps - 1)
    return {
        "heun": (lambda g: edm_heun(LINEAR, g), sig),
        "ddim": (lambda g: ddim(LINEAR, g), times),
        "dpm++2s": (lambda g: dpm_solver_singlestep(LINEAR, g, order=2, prediction="data"),
                    times),
    }


@pytest.mark.parametrize("name", ["heun", "ddim", "dpm++2s"])
def test_ode_step_is_the_samplers_own_step(name):
    build, grid = one_step_samplers()[name]
    den = GAUSSIAN.denoiser(LINEAR)
    big = build(grid)
    index = jnp.asarray([0, 2, 4, 1])
    x = jax.random.normal(KEY, (4, 2)) * 3.0
    got = ode_step(big, den, x, index, KEY)
    for i in range(4):  # the one-step sampler over [g_i, g_i+1], run by the driver
        j = int(index[i])
        want = sample(build(grid[j : j + 2]), den, x[i : i + 1], KEY)
        np.testing.assert_allclose(got[i : i + 1], want, rtol=1e-5, atol=1e-5)


def test_ode_step_refuses_multistep_solvers_and_bad_indices():
    den = GAUSSIAN.denoiser(LINEAR)
    grid = np.asarray([999.0, 500.0, 100.0, 0.0])
    with pytest.raises(ValueError, match="one-step sampler"):
        ode_step(dpm_solver_multistep(LINEAR, grid), den, jnp.ones((2, 2)), jnp.zeros(2), KEY)
    with pytest.raises(ValueError, match="one grid index per example"):
        ode_step(ddim(LINEAR, grid), den, jnp.ones((2, 2)), jnp.zeros(3, jnp.int32), KEY)


def test_cm_spec_takes_its_two_step_level():
    from diffjax.app.sampler_specs import parse_sampler

    spec = parse_sampler("cm@1.5")
    assert str(spec) == "cm@1.5" and spec.nfe(4) == 4 and str(parse_sampler("cm")) == "cm"
    np.testing.assert_allclose(default_consistency_levels(3, 1.5), [3.0, 0.75])
    den = consistency_denoiser(GAUSSIAN.denoiser(LINEAR), LINEAR, PARAM)
    x_T = jax.random.normal(KEY, (6, 2))
    by_name = spec.build(LINEAR, 2, clip_x0=None, sigma_range=(PARAM.sigma_min, PARAM.sigma_max))
    direct = consistency_multistep(LINEAR, sigmas=[1.5])
    chex.assert_trees_all_close(sample(by_name, den, x_T, KEY), sample(direct, den, x_T, KEY))
    for bad in ("cm@x", "cm@-1", "cm@logsnr", "cm@nan"):
        with pytest.raises(ValueError, match="2-step re-noising level"):
            parse_sampler(bad)
