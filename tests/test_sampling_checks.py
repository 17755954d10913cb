"""Bad sampling inputs are clear errors, never silent wrong results.

* ``generate`` / ``make_sampler``: eta for a sampler without one, negative or non-finite
  eta, non-finite guidance scale, NaN guidance rescale, empty labels, bad ``num_steps``
  (all refused before anything is compiled);
* ``sample``: a sampler and a denoiser built for different schedules (compared by
  value), and a ``Denoised`` whose ``eps``/``x0`` do not have the shape of ``x``.

Each check has a positive counterpart: valid input still works.
"""

import math
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import schedules as S
from diffjax.app import generate as generate_lib
from diffjax.app.generate import _generate, generate, make_sampler
from diffjax.app.sampler_specs import SAMPLER_NAMES, parse_sampler
from diffjax.guidance import classifier_free_guidance
from diffjax.parameterization import (
    Denoised,
    ScheduledDenoiser,
    denoiser_schedule,
    make_denoiser,
)
from diffjax.samplers import (
    GaussianMixture,
    Sampler,
    check_denoised,
    ddim,
    ddim_inversion,
    ddpm,
    dpm_solver_fast,
    edm_heun,
    karras_sigmas,
    sample,
    schedule_mismatch,
)

T = 20
SCHED = S.make_schedule("linear", T)
SCHED_COPY = S.make_schedule("linear", T)  # equal values, distinct object
COSINE = S.make_schedule("cosine", T)
GRID = S.with_final_timestep(S.trailing_timesteps(T, 4))
KEY = jax.random.key(0)
X = jax.random.normal(jax.random.key(1), (2, 3))


def _eps_fn(x, t, cond):
    return 0.3 * x


# ------------------------------------------------------------------ generate()


class _ToyClassNet(nn.Module):
    """A class-conditional eps network with a null class, cheap to compile."""

    num_classes: int | None = 3

    @nn.compact
    def __call__(self, x, t, labels, train=False):
        if self.num_classes is None:
            return jnp.tanh(x + (t / 1000.0)[:, None, None, None])
        scale = nn.Embed(self.num_classes + 1, 1)(labels)[:, None, None, :]
        return jnp.tanh(x * (1.0 + scale) + (t / 1000.0)[:, None, None, None])


MODEL = _ToyClassNet()
COMMON = dict(prediction_type="eps", image_shape=(4, 4, 1), key=KEY, labels=[0, 2], num_steps=2)


def _params(model=MODEL):
    labels = None if model.num_classes is None else jnp.zeros((1,), jnp.int32)
    return model.init(
        {"params": jax.random.key(0)}, jnp.zeros((1, 4, 4, 1)), jnp.zeros((1,)), labels
    )["params"]


def _refused_before_compiling(match, model=MODEL, **kw):
    """generate(**COMMON, **kw) raises ValueError(match) and compiles nothing."""
    before = _generate._cache_size()
    with pytest.raises(ValueError, match=match):
        generate(model, None, SCHED, **{**COMMON, **kw})
    assert _generate._cache_size() == before


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m", "dpm-fast", "unipc", "edm-heun"])
def test_generate_refuses_eta_for_a_sampler_without_one(sampler):
    _refused_before_compiling(
        rf"eta=0\.5 was given, but sampler='{re.escape(sampler)}' takes no eta.*only 'ddim' "
        r"takes eta: use sampler='ddim' or leave eta=0",
        sampler=sampler, num_steps=3, eta=0.5,
    )


@pytest.mark.parametrize("eta", [-0.1, math.nan, math.inf, -math.inf])
def test_generate_refuses_negative_or_non_finite_eta(eta):
    _refused_before_compiling(r"eta must be a finite number >= 0, got eta=", eta=eta)


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf])
def test_generate_refuses_non_finite_guidance_scale(scale):
    _refused_before_compiling(r"guidance_scale must be a finite number", guidance_scale=scale)


@pytest.mark.parametrize("guided", [True, False])
def test_generate_refuses_nan_guidance_rescale(guided):
    kw = {"guidance_scale": 2.0} if guided else {}
    _refused_before_compiling(
        r"guidance_rescale must lie in \[0, 1\], got guidance_rescale=nan",
        guidance_rescale=math.nan, **kw,
    )


@pytest.mark.parametrize("labels", [np.zeros(0), np.zeros(0, np.int32), []])
def test_generate_refuses_empty_labels(labels):
    _refused_before_compiling(r"labels is empty.*no samples requested", labels=labels)


@pytest.mark.parametrize("num_samples", [0, 2.5, True, None])
def test_generate_refuses_bad_num_samples(num_samples):
    _refused_before_compiling(
        r"num_samples=.* must be an int >= 1", model=_ToyClassNet(num_classes=None),
        labels=None, num_samples=num_samples,
    )


@pytest.mark.parametrize("num_steps", [0, -3, 2.5, "3", True, None])
def test_generate_refuses_bad_num_steps(num_steps):
    _refused_before_compiling(r"num_steps must be an int >= 1", num_steps=num_steps)


def test_generate_accepts_valid_eta_guidance_and_labels():
    """The checks let valid input through: DDIM's eta > 0 (also as a NumPy scalar), eta = 0
    for a sampler without eta, a finite guidance scale, rescale in [0, 1], NumPy ints."""
    params = _params()
    ddim_out = generate(
        MODEL, params, SCHED, **{**COMMON, "num_steps": np.int64(2)}, sampler="ddim",
        eta=np.float32(0.5), guidance_scale=2.0, guidance_rescale=0.5,
    )
    chex.assert_shape(ddim_out, (2, 4, 4, 1))
    chex.assert_tree_all_finite(ddim_out)
    ddpm_out = generate(MODEL, params, SCHED, **COMMON, sampler="ddpm", eta=0.0)
    chex.assert_shape(ddpm_out, (2, 4, 4, 1))
    chex.assert_tree_all_finite(ddpm_out)


def test_generate_compiles_once_per_spec_while_traced_arguments_change(monkeypatch):
    """A name and its parsed spec share one trace; eta, the guidance scale, rescale and
    interval, the labels and the key are traced (no recompiles)."""
    once = jax.jit(
        chex.assert_max_traces(generate_lib._generate_fn, n=1),
        static_argnames=generate_lib.STATIC_ARGNAMES,
    )
    monkeypatch.setattr(generate_lib, "_generate", once)
    params = _params()
    spec = parse_sampler("ddim")
    for i, (eta, scale, rescale, interval) in enumerate(
        [(0.0, 1.0, 0.0, None), (0.5, 3.0, 0.7, (2.0, 15.0)), (1.0, 0.0, 1.0, (0.0, 5.0))]
    ):
        out = generate(
            MODEL, params, SCHED, **{**COMMON, "key": jax.random.key(i), "labels": [i, 1]},
            sampler=spec if i % 2 else "ddim", eta=eta, guidance_scale=scale,
            guidance_rescale=rescale, guidance_interval=interval,
        )
        chex.assert_tree_all_finite(out)
    assert once._cache_size() == 1
    with pytest.raises(AssertionError, match="traced > 1 times"):  # a static change retraces
        generate(MODEL, params, SCHED, **{**COMMON, "num_steps": 3}, guidance_scale=1.0)


# --------------------------------------------------------------- make_sampler()


@pytest.mark.parametrize("name", [n for n in SAMPLER_NAMES if n != "ddim"])
def test_make_sampler_refuses_eta_for_a_sampler_without_one(name):
    with pytest.raises(ValueError, match=rf"sampler='{re.escape(name)}' takes no eta"):
        make_sampler(name, SCHED, 3, eta=0.2)
    assert make_sampler(name, SCHED, 3, eta=0.0).num_steps >= 1


@pytest.mark.parametrize("eta", [-1.0, math.nan, math.inf])
def test_make_sampler_refuses_bad_eta(eta):
    with pytest.raises(ValueError, match=r"eta must be a finite number >= 0"):
        make_sampler("ddim", SCHED, 3, eta=eta)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
@pytest.mark.parametrize("num_steps", [0, -1, 2.5, True])
def test_make_sampler_refuses_bad_num_steps(name, num_steps):
    with pytest.raises(ValueError, match=r"num_steps must be an int >= 1.*got num_steps="):
        make_sampler(name, SCHED, num_steps)


def test_make_sampler_traced_eta_still_works():
    """A traced eta cannot be checked against the sampler; DDIM still takes it."""
    den = make_denoiser(_eps_fn, SCHED, "eps")
    run = jax.jit(lambda eta: sample(make_sampler("ddim", SCHED, 3, eta=eta), den, X, KEY))
    chex.assert_tree_all_finite(run(0.5))
    assert make_sampler("ddim", SCHED, 3, eta=jnp.bfloat16(0.5)).num_steps == 3


def test_edm_refuses_non_finite_churn():
    with pytest.raises(ValueError, match=r"s_churn must be a finite number >= 0"):
        edm_heun(SCHED, karras_sigmas(3, 0.1, 10.0), s_churn=math.inf)


# ------------------------------------------------------- schedule of the sampler


def _factories(schedule):
    return {
        "ddim": ddim(schedule, GRID),
        "ddpm": ddpm(schedule, GRID),
        "dpm_solver_fast": dpm_solver_fast(schedule, 3),
        "edm_heun": edm_heun(schedule, karras_sigmas(3, 0.1, 10.0)),
        "ddim_inversion": ddim_inversion(schedule, GRID),
        **{name: make_sampler(name, schedule, 3) for name in SAMPLER_NAMES},
    }


def test_every_sampler_factory_records_its_schedule():
    for name, smp in _factories(SCHED).items():
        assert smp.schedule is SCHED, name


def test_sampler_schedule_defaults_to_none_for_a_hand_written_sampler():
    smp = Sampler(3, lambda x: x, lambda fn, st, i, k, c: st + 1.0, lambda st: st)
    assert smp.schedule is None
    np.testing.assert_array_equal(sample(smp, make_denoiser(_eps_fn, SCHED, "eps"), X, KEY), X + 3)


def test_make_denoiser_and_guidance_record_the_schedule():
    den = make_denoiser(_eps_fn, SCHED, "eps")
    assert isinstance(den, ScheduledDenoiser) and denoiser_schedule(den) is SCHED
    guided = classifier_free_guidance(den, 1.0, 0, rescale=0.5, schedule=SCHED)
    assert denoiser_schedule(guided) is SCHED
    assert denoiser_schedule(GaussianMixture.create([1.0], [[0.0]], [[[1.0]]]).denoiser(SCHED)) is (
        SCHED
    )
    assert denoiser_schedule(_eps_fn) is None
    assert denoiser_schedule(classifier_free_guidance(_eps_fn, 1.0, 0)) is None


@pytest.mark.parametrize(
    "name", ["ddim", "ddpm", "dpm_solver_fast", "edm_heun", "unipc", "dpm++2m", "ddim_inversion"]
)
def test_sample_refuses_a_denoiser_of_another_schedule(name):
    den = make_denoiser(_eps_fn, COSINE, "eps")
    with pytest.raises(
        ValueError,
        match=r"the sampler and the denoise_fn were built for different noise schedules: "
        r"alphas_cumprod differs \(in \d+ of 20 entries.*make_denoiser",
    ):
        sample(_factories(SCHED)[name], den, X, KEY)


def test_sample_refuses_schedules_of_another_length_class_or_field():
    with pytest.raises(ValueError, match=r"alphas_cumprod differs \(shape \(20,\) for the sampler"):
        sample(ddim(SCHED, GRID), make_denoiser(_eps_fn, S.make_schedule("linear", 30), "eps"),
               X, KEY)
    cont = S.LinearVPSchedule()
    cont_grid = np.array([1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"schedule class differs \(LinearVPSchedule for the "
                       r"sampler, DiscreteSchedule for the denoise_fn\)"):
        sample(ddim(cont, cont_grid), make_denoiser(_eps_fn, SCHED, "eps"), X, KEY)
    with pytest.raises(ValueError, match=r"beta_max differs \(20\.0 for the sampler, 10\.0 for"):
        sample(ddim(cont, cont_grid), make_denoiser(_eps_fn, S.LinearVPSchedule(beta_max=10.0),
                                                     "eps"), X, KEY)


def test_sample_refuses_guided_and_analytic_denoisers_of_another_schedule():
    guided = classifier_free_guidance(make_denoiser(_eps_fn, COSINE, "eps"), 2.0, 0)
    with pytest.raises(ValueError, match="different noise schedules"):
        sample(ddim(SCHED, GRID), guided, X, KEY, cond=jnp.array([1, 2]))
    mixture = GaussianMixture.create([1.0], [[0.0, 0.5, 1.0]], [np.eye(3)])
    with pytest.raises(ValueError, match="different noise schedules"):
        sample(ddim(SCHED, GRID), mixture.denoiser(COSINE), X, KEY)


def test_guidance_refuses_a_schedule_argument_unlike_the_denoisers():
    den = make_denoiser(_eps_fn, SCHED, "eps")
    with pytest.raises(
        ValueError,
        match=r"denoise_fn given to classifier_free_guidance and the schedule argument were "
        r"built for different noise schedules.*pass schedule=",
    ):
        classifier_free_guidance(den, 2.0, 0, rescale=0.5, schedule=COSINE)
    guided = classifier_free_guidance(den, 2.0, 0, rescale=0.5, schedule=SCHED_COPY)
    assert denoiser_schedule(guided) is SCHED


def test_equal_valued_schedules_and_plain_functions_are_accepted():
    """Distinct but equal-valued schedule objects match, and give the same samples as one
    shared object; a plain function (no schedule) and a traced schedule are not checked."""
    assert SCHED is not SCHED_COPY and schedule_mismatch(SCHED, SCHED_COPY) is None
    assert schedule_mismatch(S.LinearVPSchedule(), S.LinearVPSchedule()) is None
    same = sample(ddim(SCHED, GRID), make_denoiser(_eps_fn, SCHED, "eps"), X, KEY)
    copy = sample(ddim(SCHED, GRID), make_denoiser(_eps_fn, SCHED_COPY, "eps"), X, KEY)
    np.testing.assert_array_equal(same, copy)
    guided = classifier_free_guidance(make_denoiser(_eps_fn, SCHED_COPY, "eps"), 2.0, 0)
    chex.assert_tree_all_finite(sample(ddim(SCHED, GRID), guided, X, KEY, cond=jnp.array([1, 2])))
    plain = sample(ddim(SCHED, GRID), lambda x, t, c: Denoised(0.3 * x, 0.5 * x), X, KEY)
    chex.assert_tree_all_finite(plain)

    @jax.jit
    def traced(sched_a, sched_b):  # schedules as jit arguments: their arrays are traced
        return sample(ddim(sched_a, GRID), make_denoiser(_eps_fn, sched_b, "eps"), X, KEY)

    np.testing.assert_allclose(traced(SCHED, SCHED_COPY), same, rtol=1e-6)


# ---------------------------------------------------------------- Denoised shape


@pytest.mark.parametrize(
    ("bad", "field", "shape"),
    [
        (lambda x: Denoised(eps=x[0], x0=x), "eps", (3,)),  # no batch axis: broadcasts
        (lambda x: Denoised(eps=x, x0=x[:, :1]), "x0", (2, 1)),
        (lambda x: Denoised(eps=x, x0=jnp.zeros(())), "x0", ()),
    ],
)
def test_sample_refuses_a_denoised_of_the_wrong_shape(bad, field, shape):
    with pytest.raises(
        ValueError,
        match=rf"denoise_fn returned Denoised\.{field} of shape {re_shape(shape)}, but it was "
        r"called on x of shape \(2, 3\)",
    ):
        sample(ddim(SCHED, GRID), lambda x, t, c: bad(x), X, KEY)


def test_guidance_refuses_an_inner_denoised_of_the_wrong_shape():
    guided = classifier_free_guidance(lambda x, t, c: Denoised(eps=x[:1], x0=x[:1]), 2.0, 0)
    with pytest.raises(
        ValueError,
        match=r"the denoise_fn given to classifier_free_guidance returned Denoised\.eps of "
        r"shape \(1, 3\), but it was called on x of shape \(4, 3\)",
    ):
        sample(ddim(SCHED, GRID), guided, X, KEY, cond=jnp.array([1, 2]))


def test_check_denoised_accepts_the_right_shape_in_any_dtype():
    out = Denoised(eps=X.astype(jnp.bfloat16), x0=X)
    assert check_denoised(out, shape=X.shape) is out
    assert check_denoised(Denoised(eps=X[0], x0=X[0])) is not None  # no shape: not checked
    x = sample(ddim(SCHED, GRID), lambda x, t, c: Denoised(0.3 * x, (0.5 * x).astype(jnp.bfloat16)),
               X, KEY)
    chex.assert_shape(x, (2, 3))


def re_shape(shape):
    """A shape tuple as a regular expression."""
    return re.escape(str(tuple(shape)))
