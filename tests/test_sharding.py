"""Data parallelism on 8 devices, gradient accumulation, and what the step communicates.

The test session is fixed to 2 fake CPU devices (conftest), so the 8-device checks run
in a subprocess with its own XLA_FLAGS, under a timeout.
"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_subprocess import REPO, subprocess_env

from diffjax.training import sharding
from diffjax.training.step import example_keys, split_microbatches

# Four runs of 3 steps on the same batches of 16 from the same initial state: one device;
# 8 devices; 8 devices with 2 microbatches per step (shard_map), unrolled as on CPU and
# as a loop as on GPU/TPU. Dropout and label dropout are on: with per-example keys every
# run draws the same randomness. Prints the parameter differences and the all-reduces.
EIGHT_DEVICE_SCRIPT = r"""
import json
import jax
import numpy as np
from diffjax.app import builders
from diffjax.app.config import digits_config
from diffjax.data import load_dataset
from diffjax.training import sharding
from diffjax.app.train import local_batch
from diffjax.training.optimizer import make_optimizer
from diffjax.training.state import create_train_state
from diffjax.training import step as step_lib
from diffjax.training.step import make_train_step

assert jax.device_count() == 8, jax.devices()
config = digits_config("tiny")
config.model.dropout = 0.1
BATCH, STEPS = 16, 3
dataset = load_dataset("digits", split="train")
model = builders.build_unet(config.model, dataset.num_classes)
optimizer = make_optimizer(config.optim)
schedule = builders.build_schedule(config.diffusion)
init_key, train_key = jax.random.split(jax.random.key(0))
initial = jax.device_get(jax.jit(
    lambda k: create_train_state(builders.init_params(model, k, (8, 8, 1)), optimizer)
)(init_key))


def run(devices, grad_accum_steps, loop=False):
    # loop=True: keep the microbatch scan a loop, as on GPU/TPU (CPU unrolls it).
    step_lib.UNROLLED_ACCUMULATION_BACKENDS = frozenset() if loop else frozenset({"cpu"})
    mesh = sharding.make_mesh(devices)
    rep = sharding.replicated(mesh)
    state = jax.device_put(initial, rep)
    step = make_train_step(model, schedule, optimizer, config.diffusion,
                           config.training.ema_decay, grad_accum_steps=grad_accum_steps,
                           mesh=mesh)
    batches = [sharding.global_batch(local_batch(dataset, s, BATCH, 0, True), mesh)
               for s in range(STEPS)]
    compiled = jax.jit(step, in_shardings=(rep, sharding.batch_sharded(mesh), rep),
                       out_shardings=(rep, rep), donate_argnums=0
                       ).lower(state, batches[0], train_key).compile()
    losses = []
    for batch in batches:
        state, metrics = compiled(state, batch, train_key)
        losses.append(float(metrics["loss"]))
    leaf = jax.tree.leaves(state.params)[0]
    assert len(leaf.sharding.device_set) == len(devices)
    params = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(state.params))])
    return params, losses, [a._asdict() for a in sharding.hlo_all_reduces(compiled.as_text())]


runs = {
    "1dev": run(jax.devices()[:1], 1),
    "8dev": run(jax.devices(), 1),
    "8dev_accum2": run(jax.devices(), 2),
    "8dev_accum2_loop": run(jax.devices(), 2, loop=True),
}
reference = runs["1dev"][0]
print("RESULT " + json.dumps({
    "param_count": int(reference.size),
    "param_leaves": len(jax.tree.leaves(initial.params)),
    "max_abs_param": float(np.max(np.abs(reference))),
    "max_abs_diff": {k: float(np.max(np.abs(v[0] - reference))) for k, v in runs.items()},
    "losses": {k: v[1] for k, v in runs.items()},
    "all_reduces": {k: v[2] for k, v in runs.items()},
}))
"""


@pytest.fixture(scope="module")
def eight_devices():
    proc = subprocess.run(
        [sys.executable, "-c", EIGHT_DEVICE_SCRIPT],
        # Optimization level 0 halves XLA:CPU compile times; all runs compared here
        # share the flags.
        env=subprocess_env(8, "--xla_backend_optimization_level=0"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.parametrize("run", ["8dev", "8dev_accum2", "8dev_accum2_loop"])
def test_step_equals_one_device_whole_batch_step(eight_devices, run):
    # 3 AdamW steps; the parameters agree to float32 rounding (reduction order differs).
    r = eight_devices
    assert r["max_abs_diff"][run] < 1e-6 * max(r["max_abs_param"], 1.0), r["max_abs_diff"]
    np.testing.assert_allclose(r["losses"][run], r["losses"]["1dev"], rtol=1e-5)


@pytest.mark.parametrize("run", ["8dev", "8dev_accum2", "8dev_accum2_loop"])
def test_gradients_cross_devices_in_one_all_reduce(eight_devices, run):
    # One all-reduce, in the entry computation (with accumulation: after the microbatch
    # loop, not inside it), of every parameter's float32 gradient plus the loss.
    all_reduces = eight_devices["all_reduces"][run]
    assert len(all_reduces) == 1, all_reduces
    (ar,) = all_reduces
    assert ar["in_entry"], ar
    # The bytes are the parameters' (plus 4 for the loss), except that XLA may reduce a
    # gradient identical to another only once (under shard_map it finds that each
    # res block's emb_proj bias has its conv_0 bias gradient, and a skip bias its conv_1
    # bias gradient: 1340 bytes of 658756 here).
    param_bytes = 4 * eight_devices["param_count"]
    assert 0.99 * param_bytes <= ar["num_bytes"] <= param_bytes + 16, (ar, param_bytes)
    assert ar["num_operands"] <= eight_devices["param_leaves"] + 1, ar
    assert eight_devices["all_reduces"]["1dev"] == []


def test_hlo_all_reduces_parses_tuples_and_loop_bodies():
    text = "\n".join([
        "HloModule m",
        "%body.1 (p: (s32[], f32[4])) -> (s32[], f32[4]) {",
        "  %all-reduce.3 = f32[4]{0} all-reduce(%x), channel_id=2, to_apply=%add",
        "}",
        "ENTRY %main.2_spmd (a: f32[2,3]) -> f32[2,3] {",
        "  %all-reduce.7 = (f32[2,3]{1,0}, /*index=1*/bf16[5]{0}, f32[]) "
        "all-reduce(%a, %b, %c), channel_id=1, to_apply=%add",
        "  ROOT %all-reduce-start.1 = f32[8]{0} all-reduce-start(%d), to_apply=%add",
        "}",
    ])
    found = sharding.hlo_all_reduces(text)
    assert [(a.name, a.computation, a.in_entry, a.num_operands, a.num_bytes) for a in found] == [
        ("all-reduce.3", "body.1", False, 1, 16),
        ("all-reduce.7", "main.2_spmd", True, 3, 24 + 10 + 4),
        ("all-reduce-start.1", "main.2_spmd", True, 1, 32),
    ]


def test_microbatches_interleave_and_keep_per_example_keys():
    x = jnp.arange(12)
    np.testing.assert_array_equal(split_microbatches(x, 3), [[0, 3, 6, 9], [1, 4, 7, 10],
                                                             [2, 5, 8, 11]])
    keys = example_keys(jax.random.key(3), 12)
    split = split_microbatches(keys, 3)
    np.testing.assert_array_equal(
        jax.random.key_data(split[1, 2]), jax.random.key_data(jax.random.fold_in(
            jax.random.key(3), 7))
    )


def test_accumulation_that_does_not_split_is_refused():
    mesh = sharding.make_mesh()
    with pytest.raises(ValueError, match="grad_accum_steps=3 microbatches on each of the 2"):
        sharding.check_batch_size(16, mesh, 3)
    with pytest.raises(ValueError, match="grad_accum_steps=0 must be >= 1"):
        sharding.check_batch_size(16, mesh, 0)
