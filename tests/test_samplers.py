"""Tests for diffjax.samplers: DDIM / DDPM ancestral and the lax.scan driver."""

import functools
import itertools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from harness import (
    KEY,
    LINEAR,
    T,
    gaussian_w2,
    harness_model,
    harness_sample,
    run_eager,
)

from diffjax import schedules as S
from diffjax.guidance import classifier_free_guidance
from diffjax.parameterization import Denoised, make_denoiser
from diffjax.samplers import (
    DynamicThresholding,
    Sampler,
    StaticThresholding,
    ddim,
    ddim_inversion,
    ddpm,
    dpm_solver_fast,
    dpm_solver_fast_timesteps,
    dpm_solver_multistep,
    dpm_solver_singlestep,
    edm_heun,
    edm_sigma_range,
    karras_sigmas,
    sample,
    unipc,
)
from diffjax.samplers.analytic import GaussianMixture

FULL_GRID = S.with_final_timestep(np.arange(T - 1, -1, -1))  # [999, ..., 0, -1]
# diffusers' DDIM: clip_sample=True, use_clipped_model_output=False.
CLIP_KEEP_EPS = {"thresholding": StaticThresholding(1.0), "recompute_eps_after_clip": False}


# ------------------------------------------------- diffusers DDIM harness values


@pytest.mark.parametrize(
    ("prediction_type", "beta_start", "final", "golden_sum", "golden_mean"),
    [
        ("eps", 1e-4, -1, 172.0067, 0.223967),  # final alpha = 1
        ("v", 1e-4, -1, 52.5302, 0.0684),
        ("eps", 0.01, -1, 149.8295, 0.1951),  # set_alpha_to_one=True
        ("eps", 0.01, 0, 149.0784, 0.1941),  # set_alpha_to_one=False: last step 0 -> 0
    ],
)
def test_ddim_matches_diffusers_harness(
    prediction_type, beta_start, final, golden_sum, golden_mean
):
    """DDIM, 10 steps, eta 0, leading spacing offset 0 (900..0), x0 clipped to [-1, 1].

    diffusers evaluates the model at all ten leading timesteps 900, ..., 0 and its final
    step goes from t = 0 to ``final_alpha_cumprod``: alpha = 1 (our target -1) or
    alpha_bar_0 (our target 0, a zero-length step 0 -> 0 that re-applies the clipping).
    """
    sched = S.DiscreteSchedule.from_betas(S.linear_betas(T, beta_start, 0.02))
    grid = S.with_final_timestep(S.leading_timesteps(T, 10), final)
    assert grid[0] == 900 and grid[-2] == 0
    den = make_denoiser(harness_model, sched, prediction_type)
    sampler = ddim(sched, grid, **CLIP_KEEP_EPS)
    x = jax.jit(lambda x: sample(sampler, den, x, jax.random.key(0)))(harness_sample())
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(float(jnp.sum(jnp.abs(x))), golden_sum, rtol=1e-4)
    np.testing.assert_allclose(float(jnp.mean(jnp.abs(x))), golden_mean, rtol=1e-4, atol=5e-5)


def test_final_zero_length_step_only_matters_through_clipping():
    """Why the 9-evaluation grid [900..100, 0] also gives 149.0784: a DDIM step 0 -> 0
    re-noises x0 with the same eps, so it is the identity unless clipping x0 bites
    (it does not on the harness). diffusers' semantics is still 10 evaluations
    ([900..0, 0]); on an input where the last x0 is clipped the two grids differ.
    """
    sched = S.DiscreteSchedule.from_betas(S.linear_betas(T, 0.01, 0.02))
    ten = S.with_final_timestep(S.leading_timesteps(T, 10), 0)
    nine = np.array([900, 800, 700, 600, 500, 400, 300, 200, 100, 0])
    den = make_denoiser(harness_model, sched, "eps")

    @jax.jit
    def run_all(x_T):
        return [
            sample(ddim(sched, g, **CLIP_KEEP_EPS), den, x_T, KEY)
            for g in (ten, nine)
        ]

    a10, a9 = run_all(harness_sample())
    chex.assert_trees_all_close(a10, a9, atol=1e-6)
    b10, b9 = run_all(10.0 * harness_sample())
    assert float(jnp.max(jnp.abs(b10 - b9))) > 1e-3
    assert float(jnp.max(jnp.abs(b10))) <= np.sqrt(float(sched.alphas_cumprod[0])) + 1e-6


def test_ddim_step_matches_formula_with_noise():
    """One stochastic DDIM step equals Song et al. Eq. 12 with sigma_t(eta) of Eq. 16."""
    eta, t, s = 0.7, 600, 450
    x = jax.random.normal(jax.random.key(3), (2, 5))
    key = jax.random.key(7)
    den = make_denoiser(lambda x, t, c: jnp.sin(x) * 0.5, LINEAR, "eps")
    smp = ddim(LINEAR, np.array([t, s]), eta=eta)
    got = jax.jit(lambda x, key: smp.finalize(smp.step(den, smp.init(x), jnp.int32(0), key, None)))(
        x, key
    )

    ab = np.asarray(LINEAR.alphas_cumprod, np.float64)
    a_t, a_s = ab[t], ab[s]
    e = np.sin(np.asarray(x, np.float64)) * 0.5
    x0 = (np.asarray(x) - np.sqrt(1 - a_t) * e) / np.sqrt(a_t)
    std = eta * np.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
    z = np.asarray(jax.random.normal(key, x.shape, jnp.float32), np.float64)
    expected = np.sqrt(a_s) * x0 + np.sqrt(1 - a_s - std**2) * e + std * z
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_ddim_eta_one_equals_ddpm_posterior():
    """DDIM with eta = 1 is the DDPM ancestral step with beta-tilde, on any grid."""
    grid = S.with_final_timestep(S.trailing_timesteps(T, 25))
    den = make_denoiser(GaussianMixture.gaussian([0.3], [[0.25]]).eps_model(LINEAR), LINEAR, "eps")
    x_T = jax.random.normal(jax.random.key(0), (64, 1))
    key = jax.random.key(1)
    a, b = jax.jit(
        lambda x_T: (
            sample(ddim(LINEAR, grid, eta=1.0), den, x_T, key),
            sample(ddpm(LINEAR, grid, variance="beta_tilde"), den, x_T, key),
        )
    )(x_T)
    chex.assert_trees_all_close(a, b, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------- analytic Gaussian data


def ddpm_gaussian_law(schedule, grid, variance, mu, s):
    """Exact output law N(m, v) of the DDPM chain for 1-D data N(mu, s^2), x_T ~ N(0, 1).

    With the exact eps* every step is x <- A x + c + std z, so mean and variance
    propagate in closed form (float64).
    """
    ab = lambda t: 1.0 if t < 0 else float(np.float64(schedule.alphas_cumprod[int(t)]))  # noqa: E731
    m, v = 0.0, 1.0
    for t, tp in itertools.pairwise(grid):
        at, ap = ab(t), ab(tp)
        a, sg = np.sqrt(at), np.sqrt(1 - at)
        k = sg / (at * s * s + sg * sg)  # eps* = k (x - a mu)
        beta = 1 - at / ap
        cx0 = np.sqrt(ap) * beta / (1 - at)
        cxt = np.sqrt(1 - beta) * (1 - ap) / (1 - at)
        A = cx0 * (1 - sg * k) / a + cxt
        c = cx0 * sg * k * mu
        var = 0.0 if tp < 0 else (beta * (1 - ap) / (1 - at) if variance == "beta_tilde" else beta)
        m, v = A * m + c, A * A * v + var
    return m, np.sqrt(v)


@pytest.mark.parametrize(
    ("variance", "grid"),
    [
        ("beta_tilde", FULL_GRID),
        ("beta", FULL_GRID),
        ("beta_tilde", S.with_final_timestep(S.trailing_timesteps(T, 100))),
    ],
    ids=["beta_tilde-1000", "beta-1000", "beta_tilde-100"],
)
def test_ddpm_samples_1d_gaussian(variance, grid):
    """DDPM ancestral with the exact eps* of N(mu, s^2), 4096 samples.

    The sample mean/std must match the exact law of the discretized chain within
    Monte-Carlo error; on the full 1000-step chain that law is the data law to < 1%.
    (On a 100-step skipped grid the beta-tilde chain is genuinely biased: std 0.370
    instead of 0.4.)
    """
    mu, s, n = 0.7, 0.4, 4096
    den = make_denoiser(GaussianMixture.gaussian([mu], [[s**2]]).eps_model(LINEAR), LINEAR, "eps")
    key = jax.random.key(42)
    x_T = jax.random.normal(jax.random.fold_in(key, 10_000), (n, 1))
    run = jax.jit(lambda x_T: sample(ddpm(LINEAR, grid, variance=variance), den, x_T, key))
    x = np.asarray(run(x_T), np.float64)
    m_exact, s_exact = ddpm_gaussian_law(LINEAR, grid, variance, mu, s)
    # Monte-Carlo standard errors: s / sqrt(n) for the mean, ~s / sqrt(2n) for the std.
    assert abs(x.mean() - m_exact) < 4 * s / np.sqrt(n)
    assert abs(x.std() - s_exact) < 4 * s / np.sqrt(2 * n)
    if len(grid) == T + 1:
        assert abs(m_exact - mu) < 1e-3 and abs(s_exact - s) < 0.01 * s
        assert abs(x.mean() - mu) < 4 * s / np.sqrt(n)
        assert abs(x.std() - s) < 4 * s / np.sqrt(2 * n) + 0.01 * s


def test_ddim_w2_first_order_convergence():
    """DDIM (eta = 0) with the exact eps* of a Gaussian is affine in x_T, so the output
    law is N(b, J J^T) and its W2 error is exact (no sampling noise). It must decrease
    with the step count at first order (log-log slope ~ -1).
    """
    mu = np.array([1.0, -0.5])
    cov = np.array([[1.0, 0.6], [0.6, 0.5]])
    den = make_denoiser(GaussianMixture.gaussian(mu, cov).eps_model(LINEAR), LINEAR, "eps")
    probes = jnp.asarray(np.vstack([np.zeros(2), np.eye(2)]), jnp.float32)  # 0, e1, e2
    steps = [5, 10, 20, 40, 80, 160]
    w2 = []
    for n in steps:
        smp = ddim(LINEAR, S.with_final_timestep(S.trailing_timesteps(T, n)))
        out = np.asarray(jax.jit(lambda p, smp=smp: sample(smp, den, p, KEY))(probes), np.float64)
        b, J = out[0], (out[1:] - out[0]).T
        w2.append(gaussian_w2(b, J @ J.T, mu, cov))
    w2 = np.array(w2)
    assert np.all(np.diff(w2) < 0), w2
    slope = np.polyfit(np.log(steps), np.log(w2), 1)[0]
    assert -1.2 < slope < -0.8, (slope, w2)
    assert w2[-1] < 0.02


def test_ddim_continuous_schedule():
    """DDIM runs on a continuous VP schedule with a float time grid."""
    sched = S.LinearVPSchedule()
    mu, cov = np.array([0.5]), np.array([[0.09]])
    den = make_denoiser(GaussianMixture.gaussian(mu, cov).eps_model(sched), sched, "eps")
    probes = jnp.asarray([[0.0], [1.0]])
    grid = np.linspace(1.0, sched.t_min_noise, 101)
    out = np.asarray(sample(ddim(sched, grid), den, probes, KEY))
    b, j = out[0, 0], out[1, 0] - out[0, 0]
    assert abs(b - 0.5) < 0.02 and abs(abs(j) - 0.3) < 0.02


# ------------------------------------------------------------ driver mechanics


def test_driver_is_one_scan_and_returns_trajectory():
    calls = []

    def model_fn(x, t, cond):
        calls.append(1)  # Python side effect: runs once per trace, not per step
        return 0.1 * x

    den = make_denoiser(model_fn, LINEAR, "eps")
    smp = ddim(LINEAR, S.with_final_timestep(S.trailing_timesteps(T, 10)))
    x_T = jax.random.normal(jax.random.key(0), (2, 3))
    x, traj = sample(smp, den, x_T, jax.random.key(1), return_trajectory=True)
    assert len(calls) == 1
    assert smp.num_steps == 10
    chex.assert_shape(traj, (11, 2, 3))
    chex.assert_trees_all_close(traj[0], x_T)
    chex.assert_trees_all_close(traj[-1], x)
    jaxpr = jax.make_jaxpr(lambda x: sample(smp, den, x, jax.random.key(1)))(x_T)
    assert sum(eqn.primitive.name == "scan" for eqn in jaxpr.eqns) == 1


def test_state_is_float32_with_bfloat16_network():
    den = make_denoiser(lambda x, t, c: (0.1 * x).astype(jnp.bfloat16), LINEAR, "eps")
    for smp in (ddim(LINEAR, FULL_GRID[::100]), ddpm(LINEAR, FULL_GRID[::100])):
        x = sample(smp, den, jnp.ones((2, 3), jnp.bfloat16), jax.random.key(0))
        assert x.dtype == jnp.float32


def test_vmap_over_keys():
    den = make_denoiser(GaussianMixture.gaussian([0.0], [[1.0]]).eps_model(LINEAR), LINEAR, "eps")
    smp = ddpm(LINEAR, S.with_final_timestep(S.trailing_timesteps(T, 20)))
    keys = jax.random.split(jax.random.key(0), 3)

    def one(k):
        return sample(smp, den, jax.random.normal(k, (2, 1)), k)

    batched, single = jax.jit(lambda ks: (jax.vmap(one)(ks), one(ks[1])))(keys)
    chex.assert_shape(batched, (3, 2, 1))
    chex.assert_trees_all_close(batched[1], single, rtol=1e-5, atol=1e-6)
    assert not np.allclose(batched[0], batched[1])


def test_stochastic_ddim_uses_the_key():
    den = make_denoiser(lambda x, t, c: 0.5 * x, LINEAR, "eps")
    smp = ddim(LINEAR, S.with_final_timestep(S.trailing_timesteps(T, 10)), eta=1.0)
    x_T = jnp.ones((4, 2))
    run = jax.jit(lambda k: sample(smp, den, x_T, k))
    a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
    chex.assert_trees_all_close(a, b)
    assert not np.allclose(a, c)


def test_no_recompile_when_scale_eta_seed_labels_change():
    def model_fn(x, t, labels):
        return jnp.tanh(x * (1.0 + labels.astype(jnp.float32)[:, None] / 10.0))

    den = make_denoiser(model_fn, LINEAR, "eps")
    grid = S.with_final_timestep(S.trailing_timesteps(T, 8))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def generate(key, labels, guidance_scale, eta):
        guided = classifier_free_guidance(den, guidance_scale, null_cond=10)
        x_T = jax.random.normal(key, (labels.shape[0], 3))
        return sample(ddim(LINEAR, grid, eta=eta), guided, x_T, key, cond=labels)

    chex.clear_trace_counter()
    f32 = jnp.float32
    outs = [
        generate(jax.random.key(0), jnp.array([1, 2]), f32(1.0), f32(0.0)),
        generate(jax.random.key(1), jnp.array([3, 4]), f32(3.0), f32(0.5)),
        generate(jax.random.key(2), jnp.array([5, 6]), f32(7.5), f32(1.0)),
    ]
    assert all(o.shape == (2, 3) and o.dtype == jnp.float32 for o in outs)
    assert not np.allclose(outs[0], outs[1])


def test_custom_sampler_runs_in_driver():
    """Any Sampler-shaped NamedTuple runs in the driver (here: x <- x + t_index)."""
    smp = Sampler(
        num_steps=3,
        init=lambda x: (x, jnp.zeros((), jnp.float32)),
        step=lambda fn, st, i, k, c: (st[0] + i.astype(jnp.float32), st[1] + 1.0),
        finalize=lambda st: st[0],
    )
    x = sample(smp, lambda x, t, c: Denoised(x, x), jnp.zeros((1,)), jax.random.key(0))
    np.testing.assert_array_equal(x, [3.0])
    assert smp.nfe is None and smp.order is None  # unknown for a hand-written sampler


def _every_factory():
    """One sampler per factory and per rule that changes its network-evaluation count."""
    clean = S.with_final_timestep(S.linspace_timesteps(T, 5), final=-1)
    sigma_min = S.with_final_timestep(S.linspace_timesteps(T, 5), final=0)
    sigmas = karras_sigmas(4, *edm_sigma_range(LINEAR))
    return {
        "ddim": ddim(LINEAR, clean),
        "ddim-final-0-to-0": ddim(LINEAR, S.with_final_timestep(S.leading_timesteps(T, 4), 0)),
        "ddpm": ddpm(LINEAR, clean),
        "ddim_inversion": ddim_inversion(LINEAR, clean),
        **{
            f"singlestep-{order}-{prediction}": dpm_solver_singlestep(
                LINEAR, clean if prediction == "data" else sigma_min, order, prediction=prediction
            )
            for order in (1, 2, 3)
            for prediction in ("data", "noise")
        },
        "singlestep-3-data-sigma_min": dpm_solver_singlestep(LINEAR, sigma_min, 3),
        "singlestep-mixed": dpm_solver_singlestep(LINEAR, sigma_min, (3, 2, 1, 2, 3)),
        **{f"fast-{nfe}": dpm_solver_fast(LINEAR, nfe) for nfe in (6, 7, 8)},
        "fast-order-2": dpm_solver_fast(LINEAR, 5, order=2),
        "multistep-3": dpm_solver_multistep(LINEAR, clean, 3),
        "multistep-2-noise": dpm_solver_multistep(LINEAR, sigma_min, 2, prediction="noise"),
        "sde-dpm-solver++": dpm_solver_multistep(LINEAR, clean, 2, sde=True),
        "unipc-3": unipc(LINEAR, clean, 3),
        "unipc-no-corrector": unipc(LINEAR, clean, 2, disable_corrector=(1, 2)),
        "edm_heun": edm_heun(LINEAR, sigmas),  # N Heun steps but an Euler step onto 0
        "edm_heun-sigma_min": edm_heun(LINEAR, sigmas[:-1]),  # Heun steps only
    }


def test_every_factory_sets_nfe_to_the_counted_network_calls():
    """Sampler.nfe equals the network calls of one run, counted on the Python side while
    stepping eagerly (the static order dispatch runs only the chosen branch): one per step
    for DDIM, DDPM, the inverter and the multistep solvers (UniPC's corrector reuses the
    next step's evaluation), k per order-k singlestep step (a data-prediction solver's last
    step onto t = -1 is first order), the budget for DPM-Solver-fast, 2 N - 1 for EDM Heun
    onto sigma = 0. The run is traced, not executed: every step is unrolled with a
    concrete (NumPy) step index, so each network call is traced once."""
    calls = []

    def unrolled(sampler, den, x):
        state = sampler.init(x)
        for i in range(sampler.num_steps):
            state = sampler.step(den, state, np.int32(i), jax.random.fold_in(KEY, i), None)
        return sampler.finalize(state)

    def model_fn(x, t, c):
        calls.append(1)
        return 0.1 * x

    den = make_denoiser(model_fn, LINEAR, "eps")
    samplers = _every_factory()
    for name, sampler in samplers.items():
        calls.clear()
        jax.make_jaxpr(functools.partial(unrolled, sampler, den))(jnp.ones((1, 2)))
        assert isinstance(sampler.nfe, int) and len(calls) == sampler.nfe, (name, len(calls))
    assert samplers["singlestep-3-data"].nfe == 3 * 4 + 1  # first-order last step
    assert samplers["singlestep-3-data-sigma_min"].nfe == 3 * 5
    assert samplers["edm_heun"].nfe == 2 * 4 - 1
    assert [samplers[f"fast-{n}"].nfe for n in (6, 7, 8)] == [6, 7, 8]


def test_every_factory_declares_its_order():
    """Sampler.order: the method's order (tests/test_sampler_order.py measures it), and
    None for the stochastic samplers; DDIM with a traced eta declares the order it has at
    eta = 0."""
    orders = {name: sampler.order for name, sampler in _every_factory().items()}
    assert orders == {
        "ddim": 1,
        "ddim-final-0-to-0": 1,
        "ddpm": None,
        "ddim_inversion": 1,
        **{f"singlestep-{k}-{p}": k for k in (1, 2, 3) for p in ("data", "noise")},
        "singlestep-3-data-sigma_min": 3,
        "singlestep-mixed": 2,  # bounded lower-order steps of order 1 cost one order
        "fast-6": 2,  # (3, 2, 1): a first-order step
        "fast-7": 2,  # (3, 3, 1)
        "fast-8": 3,  # (3, 3, 2)
        "fast-order-2": 2,  # (2, 2, 1)
        "multistep-3": 3,
        "multistep-2-noise": 2,
        "sde-dpm-solver++": None,
        "unipc-3": 4,
        "unipc-no-corrector": 2,
        "edm_heun": 2,
        "edm_heun-sigma_min": 2,
    }
    grid = S.with_final_timestep(S.trailing_timesteps(T, 4))
    assert ddim(LINEAR, grid, eta=0.5).order is None
    assert jax.jit(lambda eta: jnp.float32(ddim(LINEAR, grid, eta=eta).order))(0.5) == 1
    assert ddim(LINEAR, grid, eta=0.0).order == 1
    assert edm_heun(LINEAR, karras_sigmas(3, 0.1, 10.0), s_churn=1.0).order is None


# ------------------------------------------------------------------- bad input


def test_bad_inputs():
    grid = S.with_final_timestep(S.trailing_timesteps(T, 10))
    with pytest.raises(ValueError, match="eta"):
        ddim(LINEAR, grid, eta=-0.1)
    with pytest.raises(ValueError, match="timesteps"):
        ddim(LINEAR, np.array([999]))  # wrong grid length (needs num_steps + 1 >= 2)
    with pytest.raises(ValueError, match="timesteps"):
        ddim(LINEAR, np.array([[999, 0]]))
    with pytest.raises(ValueError, match="timesteps"):
        ddim(LINEAR, np.array([1000, 500, -1]))  # past the schedule's last timestep
    with pytest.raises(ValueError, match="timesteps"):
        ddpm(LINEAR, np.array([100, 500, -1]))  # increasing
    with pytest.raises(ValueError, match="timesteps"):
        ddpm(LINEAR, np.array([500, -1, -1]))  # model evaluated at the clean point
    with pytest.raises(ValueError, match="variance"):
        ddpm(LINEAR, grid, variance="learned")
    with pytest.raises(ValueError, match="thresholding.max_value"):
        ddim(LINEAR, grid, thresholding=StaticThresholding(0.0))
    with pytest.raises(ValueError, match="timesteps"):
        jax.jit(lambda g: ddim(LINEAR, g).num_steps)(jnp.asarray(grid))
    with pytest.raises(ValueError, match="num_steps"):
        ddim(LINEAR, S.with_final_timestep(S.leading_timesteps(T, T + 1)))


def test_traced_eta_zero_equals_static_eta_zero():
    """A traced eta is accepted (not checked at trace time) and eta = 0 is deterministic."""
    den = make_denoiser(lambda x, t, c: 0.5 * x, LINEAR, "eps")
    grid = FULL_GRID[::100]
    x_T = jnp.ones((4, 2))

    @jax.jit
    def run(eta):
        return sample(ddim(LINEAR, grid, eta=eta), den, x_T, KEY), sample(
            ddim(LINEAR, grid), den, x_T, KEY
        )

    traced, static = run(0.0)
    chex.assert_trees_all_close(traced, static, rtol=1e-6, atol=1e-6)


def test_ddim_clipping_recomputes_eps_from_the_clipped_x0():
    """With recompute_eps_after_clip (the default) one step is exactly
    alpha' x0c + sigma' (x_t - alpha x0c) / sigma for the clipped x0c; without it, the
    network's eps is kept. Both agree when nothing is clipped."""
    sched = S.DiscreteSchedule.from_betas(S.linear_betas(T))
    grid = np.array([500, 400])
    x_t = jnp.linspace(-3.0, 3.0, 24).reshape(1, 4, 6, 1)
    den = make_denoiser(lambda x, t, c: 0.3 * x, sched, "eps")
    out = den(x_t, jnp.float32(500), None)
    a, s, a_p, s_p = (
        float(f(jnp.float32(t)))
        for f, t in ((sched.alpha, 500), (sched.sigma, 500), (sched.alpha, 400), (sched.sigma, 400))
    )
    x0c = jnp.clip(out.x0, -1, 1)
    assert float(jnp.max(jnp.abs(out.x0))) > 1  # clipping bites on this input
    got = sample(ddim(sched, grid, thresholding=StaticThresholding(1.0)), den, x_t, KEY)
    np.testing.assert_allclose(got, a_p * x0c + s_p * (x_t - a * x0c) / s, rtol=1e-5, atol=1e-6)
    kept = sample(ddim(sched, grid, **CLIP_KEEP_EPS), den, x_t, KEY)
    np.testing.assert_allclose(kept, a_p * x0c + s_p * out.eps, rtol=1e-5, atol=1e-6)
    small = x_t * 0.05
    np.testing.assert_allclose(
        sample(ddim(sched, grid, thresholding=StaticThresholding(1.0)), den, small, KEY),
        sample(ddim(sched, grid, **CLIP_KEEP_EPS), den, small, KEY),
        rtol=1e-5,
        atol=1e-6,
    )


# ------------------------------------------------------ make_sampler step counts


def test_make_sampler_valid_at_every_allowed_step_count():
    """num_steps = T (every training timestep) is valid for the data-prediction solvers
    (their grid ends at t = -1) and agrees with T - 1 steps; noise-prediction solvers end
    at t = 0 and allow T - 1; more steps than the schedule has is a clear error."""
    from diffjax.app.generate import make_sampler

    den = make_denoiser(GaussianMixture.gaussian([0.3], [[0.25]]).eps_model(LINEAR), LINEAR, "eps")
    x_T = jnp.asarray([[0.0], [1.0]])
    full, near = (make_sampler("dpm++2m", LINEAR, n, clip_x0=None) for n in (T, T - 1))
    assert full.num_steps == T and near.num_steps == T - 1
    a, b = jax.jit(lambda x: (sample(full, den, x, KEY), sample(near, den, x, KEY)))(x_T)
    assert bool(jnp.all(jnp.isfinite(a)))
    chex.assert_trees_all_close(a, b, atol=2e-3)
    grid = S.linspace_timesteps(T, T - 1)
    assert len(np.unique(grid)) == T - 1 and grid[-1] >= 1
    with pytest.raises(ValueError, match="num_steps=1000 is too many"):
        S.linspace_timesteps(T, T)
    with pytest.raises(ValueError, match="num_steps=1000 is too many"):
        make_sampler("dpm2", LINEAR, T)  # noise prediction: target t = 0
    for name in ("dpm++2m", "ddim"):
        with pytest.raises(ValueError, match="num_steps=1001"):
            make_sampler(name, LINEAR, T + 1)
    with pytest.raises(ValueError, match=re.escape("unknown sampler='dpm++9m'")):
        make_sampler("dpm++9m", LINEAR, 10)


def test_raw_network_is_refused_at_trace_time():
    """An x0 (or eps, v) network passed without make_denoiser is a TypeError while
    tracing, in the driver and in the guidance wrapper, naming the fix."""
    raw = lambda x, t, c: 0.5 * x  # noqa: E731  (an x0 network, not a denoiser)
    x = jnp.ones((2, 3))
    smp = ddim(LINEAR, S.with_final_timestep(S.trailing_timesteps(T, 4)))
    with pytest.raises(TypeError, match="make_denoiser"):
        jax.make_jaxpr(lambda x: sample(smp, raw, x, KEY))(x)
    guided = classifier_free_guidance(raw, 1.0, null_cond=0)
    with pytest.raises(TypeError, match="classifier_free_guidance.*make_denoiser"):
        jax.make_jaxpr(lambda x: guided(x, 5.0, jnp.zeros((2,), jnp.int32)))(x)


def test_network_evaluations_of_every_named_sampler():
    """spec.nfe(steps) and Sampler.nfe equal the calls each sampler makes (counted on
    the Python side while stepping eagerly: the static order dispatch runs only the
    chosen branch)."""
    from diffjax.app.generate import make_sampler
    from diffjax.app.sampler_specs import SAMPLER_NAMES, parse_sampler

    calls = []

    def model_fn(x, t, c):
        calls.append(1)
        return 0.1 * x

    den = make_denoiser(model_fn, LINEAR, "eps")
    x = jnp.ones((1, 2))
    one_per_step = ("ddim", "ddpm", "ddpm_beta", "dpm++3m", "sde-dpm++2m")  # as dpm++2m
    on_logsnr_grid = ("dpm++2s@logsnr", "dpm3@logsnr", "unipc@logsnr")  # no clean last step
    for name in (*(n for n in SAMPLER_NAMES if n not in one_per_step), *on_logsnr_grid):
        sampler = make_sampler(name, LINEAR, 4)
        calls.clear()
        state = sampler.init(x)
        for i in range(sampler.num_steps):
            state = sampler.step(den, state, jnp.int32(i), KEY, None)
        assert len(calls) == parse_sampler(name).nfe(4) == sampler.nfe, name


def test_grid_suffix_picks_the_log_snr_grid_to_sigma_min():
    """'dpm++2m@logsnr' is DPM-Solver++(2M) on DPM-Solver's logSNR-uniform grid from
    t = T-1 to t = 0 (with the same thresholding as 'dpm++2m'); '@linspace' is the
    default grid."""
    from diffjax.app.generate import make_sampler

    den = make_denoiser(lambda x, t, c: 0.3 * x, LINEAR, "eps")
    x_T = jax.random.normal(KEY, (3, 5))
    direct = dpm_solver_multistep(
        LINEAR, dpm_solver_fast_timesteps(LINEAR, 7), thresholding=DynamicThresholding(0.995, 1.0)
    )
    got = sample(make_sampler("dpm++2m@logsnr", LINEAR, 7), den, x_T, KEY)
    chex.assert_trees_all_close(got, sample(direct, den, x_T, KEY), rtol=1e-6)
    default = sample(make_sampler("dpm++2m", LINEAR, 7), den, x_T, KEY)
    explicit = sample(make_sampler("dpm++2m@linspace", LINEAR, 7), den, x_T, KEY)
    chex.assert_trees_all_equal(default, explicit)
    assert float(jnp.max(jnp.abs(got - default))) > 1e-3  # a different grid


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("dpm++2m@karras", "unknown grid 'karras' in sampler='dpm\\+\\+2m@karras'"),
        ("ddim@logsnr", "sampler='ddim@logsnr': a grid suffix applies to the DPM-Solver"),
        ("edm-heun@logsnr", "'edm-heun' uses its own grid"),
        ("dpm-fast@linspace", "'dpm-fast' uses its own grid"),
        ("dpm9@logsnr", "unknown sampler='dpm9@logsnr'"),
    ],
)
def test_bad_grid_suffix_names_the_sampler(name, match):
    from diffjax.app.generate import make_sampler
    from diffjax.app.sampler_specs import parse_sampler

    for call in (lambda: make_sampler(name, LINEAR, 5), lambda: parse_sampler(name)):
        with pytest.raises(ValueError, match=match):
            call()


def test_every_deterministic_solver_converges_to_the_same_ode_solution():
    """On a 2-D three-component Gaussian mixture with the exact score (float64,
    continuous linear VP schedule, t = 1 to t_min_noise), every deterministic solver's output
    from the same x_T approaches the converged ODE solution (UniPC-3, 300 steps; at 500
    steps it agrees with DPM-Solver++(3M) to 2e-6) as the network budget grows from
    6 to 24 evaluations: RMS error down by more than 3x (measured 4.1x for DDIM, 8x to
    61x for the others) and below 0.12 at 24 (0.007 for UniPC-3 to 0.109 for EDM Heun,
    whose Karras grid spends its steps at large sigma)."""
    with jax.enable_x64(True):
        sched = S.LinearVPSchedule()
        mixture = GaussianMixture.create(
            [0.5, 0.3, 0.2],
            [[1.5, 0.0], [-1.0, 1.0], [-0.5, -1.5]],
            [np.eye(2) * 0.1, [[0.3, 0.1], [0.1, 0.2]], np.eye(2) * 0.15],
        )
        den = jax.jit(mixture.denoiser(sched))
        x_T = jax.random.normal(jax.random.key(0), (8, 2), jnp.float64)
        grid = functools.partial(dpm_solver_fast_timesteps, sched)
        sigma_range = edm_sigma_range(sched)
        solvers = {  # name: sampler for a budget of n network evaluations
            "ddim": lambda n: ddim(sched, grid(n)),
            "dpm2": lambda n: dpm_solver_singlestep(sched, grid(n // 2), 2, prediction="noise"),
            "dpm++2s": lambda n: dpm_solver_singlestep(sched, grid(n // 2), 2),
            "dpm3": lambda n: dpm_solver_singlestep(sched, grid(n // 3), 3, prediction="noise"),
            "dpm-fast": lambda n: dpm_solver_fast(sched, n),
            "dpm-2m": lambda n: dpm_solver_multistep(sched, grid(n), 2, prediction="noise"),
            "dpm++2m": lambda n: dpm_solver_multistep(sched, grid(n), 2),
            "dpm++3m": lambda n: dpm_solver_multistep(sched, grid(n), 3),
            "unipc": lambda n: unipc(sched, grid(n), 2),
            "unipc-3": lambda n: unipc(sched, grid(n), 3),
            # n / 2 Heun steps between Karras levels, ending at sigma_min like the others.
            "edm-heun": lambda n: edm_heun(sched, karras_sigmas(n // 2 + 1, *sigma_range)[:-1]),
        }
        reference = unipc(sched, grid(300), 3, lower_order_final="never")
        x_ref = jax.jit(lambda x: sample(reference, den, x, KEY))(x_T)
        for name, build in solvers.items():
            errors = [
                float(jnp.sqrt(jnp.mean(jnp.sum((run_eager(build(n), den, x_T) - x_ref) ** 2, -1))))
                for n in (6, 24)
            ]
            assert errors[1] < errors[0] / 3 and errors[1] < 0.12, (name, errors)
