"""Samplers by name: the spec parsed once, its NFE arithmetic in closed form.

Every name and grid builds and runs on a toy denoiser (so the CLI needs to run only one
ODE and one stochastic sampler end to end); ``spec.nfe`` equals the built sampler's
``Sampler.nfe`` and the network calls counted while it runs; ``steps_for_nfe`` equals a
brute-force search over step counts.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import schedules as S
from diffjax.app import generate as generate_lib
from diffjax.app.sampler_specs import (
    GRID_NAMES,
    PIXEL_DATA_RANGE,
    SAMPLER_NAMES,
    SamplerSpec,
    default_clip_x0,
    parse_sampler,
    solver_timesteps,
)
from diffjax.nn import UNet
from diffjax.parameterization import make_denoiser
from diffjax.samplers import DynamicThresholding, dpm_solver_multistep, sample, unipc

T = 40
SCHED = S.make_schedule("linear", T)
KEY = jax.random.key(0)


def _specs():
    out = [SamplerSpec(name) for name in SAMPLER_NAMES]
    for name in SAMPLER_NAMES:
        for grid in GRID_NAMES[1:]:
            try:
                out.append(SamplerSpec(name, grid))
            except ValueError:
                continue
    return out


SPECS = _specs()


def test_every_grid_family_has_both_grids_and_names_round_trip():
    assert len(SPECS) > len(SAMPLER_NAMES)
    for spec in SPECS:
        assert parse_sampler(str(spec)) == spec
        assert parse_sampler(spec) is spec
        assert hash(parse_sampler(str(spec))) == hash(spec)
    linspace = SamplerSpec("dpm++2m", "linspace")
    assert parse_sampler("dpm++2m@linspace") == SamplerSpec("dpm++2m") == linspace
    assert str(parse_sampler("dpm++2m@linspace")) == "dpm++2m"
    assert SamplerSpec("dpm++2m").grid == "linspace" and SamplerSpec("ddim").grid is None


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_every_spec_builds_runs_and_counts_its_network_calls(spec):
    calls = []

    def model_fn(x, t, c):
        calls.append(1)
        return 0.1 * x

    den = make_denoiser(model_fn, SCHED, "eps")
    x_T = jax.random.normal(KEY, (2, 3))
    limit = spec.max_steps(T) or 2 * T
    for n in sorted({spec.min_steps, 3, 4, 5, 8, 16, limit}):
        sampler = spec.build(SCHED, n)
        assert sampler.nfe == spec.nfe(n), (spec, n)
        if n != 4:  # built only: the declared count
            continue
        calls.clear()
        state = sampler.init(x_T)
        for i in range(sampler.num_steps):  # eagerly: the order dispatch runs one branch
            state = sampler.step(den, state, jnp.int32(i), KEY, None)
        assert len(calls) == spec.nfe(n), (spec, n)
        out = jax.jit(lambda x, s=sampler: sample(s, den, x, KEY))(x_T)
        chex.assert_shape(out, x_T.shape)
        chex.assert_tree_all_finite(out)


def _builds(spec, n):
    try:
        spec.build(SCHED, n)
    except ValueError:
        return False
    return True


def _brute_force_steps(spec, nfes):
    """For each budget, the most steps that fit it, trying every count.

    Which counts build is probed where it can change: the smallest counts and both
    sides of ``max_steps`` (checked to refuse one more step); the counts in between build.
    """
    limit = spec.max_steps(T)
    top = limit if limit is not None else 2 * max(nfes)
    if limit is not None:
        assert _builds(spec, limit) and not _builds(spec, limit + 1), spec
    valid = [n for n in range(1, top + 1) if n > 5 or _builds(spec, n)]
    found = {}
    for nfe in nfes:
        fits = [n for n in valid if spec.nfe(n) <= nfe]
        found[nfe] = (max(fits), spec.nfe(max(fits))) if fits else None
    return found


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_steps_for_nfe_is_the_brute_force_answer(spec):
    nfes = (1, 2, 3, 5, 8, 13, 45)
    expected = _brute_force_steps(spec, nfes)
    for nfe in nfes:
        assert spec.steps_for_nfe(nfe, T) == expected[nfe], (spec, nfe)


def test_bad_names_and_budgets_are_refused():
    with pytest.raises(ValueError, match="unknown sampler='dpm9'"):
        parse_sampler("dpm9")
    for grid in GRID_NAMES:
        with pytest.raises(ValueError, match=f"sampler='ddim@{grid}': a grid suffix applies"):
            parse_sampler(f"ddim@{grid}")
    with pytest.raises(ValueError, match="nfe must be an int >= 1"):
        parse_sampler("ddim").steps_for_nfe(0, T)
    with pytest.raises(ValueError, match="eta=0.3 was given, but sampler='unipc'"):
        parse_sampler("unipc").build(SCHED, 3, eta=0.3)


def test_the_reference_third_order_update_is_reachable_by_name():
    den = make_denoiser(lambda x, t, c: jnp.sin(x), SCHED, "eps")
    x_T = jax.random.normal(KEY, (2, 3))
    taylor = sample(parse_sampler("dpm++3m").build(SCHED, 6, clip_x0=None), den, x_T, KEY)
    ref = sample(parse_sampler("dpm++3m-reference").build(SCHED, 6, clip_x0=None), den, x_T, KEY)
    assert parse_sampler("dpm++3m-reference").build(SCHED, 6).order == 2
    assert float(np.max(np.abs(np.asarray(taylor) - np.asarray(ref)))) > 1e-6


def test_clip_x0_follows_the_data_range_and_keeps_every_result():
    """Pixel data in [-1, 1] clip at 1.0 and latent (unbounded) data never; clip_x0 = 1
    is the dynamic thresholding (0.995, 1.0) the DPM family and UniPC used, exactly."""
    assert default_clip_x0() == default_clip_x0(PIXEL_DATA_RANGE) == 1.0
    assert default_clip_x0((-2.0, 2.0)) == 2.0
    assert default_clip_x0(None) is None and default_clip_x0((0.0, 1.0)) is None
    den = make_denoiser(lambda x, t, c: -3.0 * x, SCHED, "eps")  # x0 far outside [-1, 1]
    x_T = jax.random.normal(KEY, (2, 3))
    dynamic = DynamicThresholding(ratio=0.995, max_value=1.0)
    for name, factory in (("dpm++2m", dpm_solver_multistep), ("unipc", unipc)):
        spec = parse_sampler(name)
        grid = solver_timesteps(T, 4, clean_target=True)
        old = sample(factory(SCHED, grid, 2, thresholding=dynamic), den, x_T, KEY)
        new = sample(spec.build(SCHED, 4), den, x_T, KEY)
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
        unclipped = sample(spec.build(SCHED, 4, clip_x0=None), den, x_T, KEY)
        assert float(np.max(np.abs(np.asarray(unclipped) - np.asarray(old)))) > 1e-3


def test_generate_resolves_clip_x0_from_the_data_range(monkeypatch):
    """'auto' (the default) clips a pixel model at 1.0 and a latent model not at all."""
    seen = []
    monkeypatch.setattr(generate_lib, "_generate", lambda *a, **kw: seen.append(kw))
    common = dict(prediction_type="eps", image_shape=(2, 2, 1), key=KEY, num_samples=1)
    model = UNet(base_channels=8, channel_mults=(1,), num_res_blocks=1)
    for kw, clip in (({}, 1.0), ({"data_range": None}, None), ({"clip_x0": 0.5}, 0.5)):
        generate_lib.generate(model, None, SCHED, **common, **kw)
        assert seen[-1]["clip_x0"] == clip and seen[-1]["sampler"] == SamplerSpec("ddim")
    with pytest.raises(ValueError, match="unknown clip_x0='always'"):
        generate_lib.generate(model, None, SCHED, **common, clip_x0="always")
