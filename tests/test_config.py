import glob
import json
import os
import re

import ml_collections
import pytest

from diffjax.app import builders
from diffjax.app import config as config_lib
from diffjax.data import TFDS_DATASETS, TFDS_PREFIX
from diffjax.schedules import SCHEDULE_NAMES


def test_digits_config_loads_from_file_with_variant():
    full = config_lib.load_config("experiments/configs/digits.py")
    tiny = config_lib.load_config("experiments/configs/digits.py:tiny")
    assert full.data.name == "digits"
    assert tiny.training.num_steps < full.training.num_steps


def test_unknown_variant_and_missing_file_are_clear():
    with pytest.raises(ValueError, match="variant"):
        config_lib.load_config("experiments/configs/digits.py:huge")
    with pytest.raises(FileNotFoundError, match="nope.py"):
        config_lib.load_config("nope.py")


def test_overrides_are_typed_and_checked():
    config = config_lib.digits_config()
    config_lib.apply_overrides(
        config,
        [
            "training.num_steps=7",
            "optim.learning_rate=3e-4",
            "model.channel_mults=(1,2,4)",
            "model.dtype=bfloat16",
            "training.progress_bar=false",
            "model.attention_resolutions=8",
        ],
    )
    assert config.training.num_steps == 7
    assert config.optim.learning_rate == pytest.approx(3e-4)
    assert config.model.channel_mults == (1, 2, 4)
    assert config.model.dtype == "bfloat16"
    assert config.training.progress_bar is False
    assert config.model.attention_resolutions == (8,)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.chanels=3", "unknown config key 'model.chanels'.*model.channel_mults"),
        ("training.num_steps=1.5", "training.num_steps.*int"),
        ("training.num_steps", "key.path=value"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ValueError, match=message):
        config_lib.apply_overrides(config_lib.digits_config(), [override])


def test_json_round_trip_and_mismatch_report():
    config = config_lib.digits_config()
    restored = config_lib.from_json(config_lib.to_json(config))
    assert restored.to_dict() == config.to_dict()
    assert config_lib.checkpoint_mismatches(restored, config) == []
    other = config_lib.digits_config()
    other.model.base_channels = config.model.base_channels + 16
    other.training.num_steps = 10  # training length may change between runs
    diffs = config_lib.checkpoint_mismatches(config, other)
    assert len(diffs) == 1 and diffs[0].startswith("model.base_channels")


def test_execution_only_model_keys_may_change_on_resume():
    saved = config_lib.digits_config()
    resumed = config_lib.digits_config()
    resumed.model.dtype = "bfloat16"
    resumed.model.remat = True
    assert config_lib.checkpoint_mismatches(saved, resumed) == []


def test_saved_config_with_a_removed_key_loads():
    data = json.loads(config_lib.to_json(config_lib.digits_config()))
    data["model"]["conv_weight_grad"] = "matmul"  # an execution-only key of older versions
    loaded = config_lib.from_json(json.dumps(data))
    assert "conv_weight_grad" not in loaded.model
    assert config_lib.to_json(loaded) == config_lib.to_json(config_lib.digits_config())


def test_saved_config_without_an_added_key_loads_with_the_older_behaviour():
    data = json.loads(config_lib.to_json(config_lib.digits_config()))
    assert data["model"]["scale_shift_norm"] is True  # the default of new configs
    del data["model"]["scale_shift_norm"]  # a config saved before the key existed
    loaded = config_lib.from_json(json.dumps(data))
    assert loaded.model.scale_shift_norm is False  # the model those versions built
    assert set(config_lib.ADDED_KEYS) <= set(config_lib.flat_keys(config_lib.base_config()))


def test_saved_config_with_unknown_key_is_rejected():
    data = json.loads(config_lib.to_json(config_lib.digits_config()))
    data["model"]["wings"] = 2
    with pytest.raises(ValueError, match="model.wings"):
        config_lib.from_json(json.dumps(data))


# --------------------------------------------------------------------------------------
# validate_config
# --------------------------------------------------------------------------------------

CONFIG_SPECS = (
    "celeba64.py",
    "celeba64.py:tiny",
    "cifar10_ddpm.py",
    "cifar10_ddpm.py:tiny",
    "digits.py",
    "digits.py:tiny",
    "digits_ict.py",
    "digits_ict.py:tiny",
    "digits_vae.py",
    "digits_vae.py:tiny",
    "fashion_mnist.py",
    "fashion_mnist.py:cpu",
    "fashion_mnist.py:tiny",
    "fashion_mnist.py:tfds",
    "fashion_mnist_vae.py",
    "fashion_mnist_vae.py:f2",
    "fashion_mnist_vae.py:tiny",
    "fashion_mnist.py:tfds,tiny",
    "imagenet64_cfg.py",
    "imagenet64_cfg.py:tiny",
    "mnist.py",
    "mnist.py:tiny",
)
IN_MEMORY_SIDES = {"digits": 8, "fashion_mnist": 28}


def tiny_with(key, value):
    """digits_config('tiny') with ``key`` set to ``value``, of any type.

    The leaf is deleted first: a ConfigDict refuses a value of another type than the
    one it holds, and a config file could build its tree without that safety.
    """
    config = config_lib.digits_config("tiny")
    parent, _, leaf = key.rpartition(".")
    node = config
    for part in parent.split(".") if parent else ():
        node = node[part]
    if leaf in node:
        del node[leaf]
    node[leaf] = value
    return config


BAD_VALUES = [
    # training
    ("training.num_steps", 0, r"training\.num_steps=0: expected an int >= 1"),
    ("training.num_steps", True, r"training\.num_steps=True \(bool\): expected an int"),
    ("training.num_steps", 10.0, r"training\.num_steps=10\.0 \(float\): expected an int"),
    ("training.batch_size", 0, r"training\.batch_size=0: expected an int >= 1"),
    ("training.log_every", 0, r"training\.log_every=0: expected an int >= 1"),
    ("training.checkpoint_every", -1, r"training\.checkpoint_every=-1: expected an int >= 1"),
    ("training.max_checkpoints_to_keep", 0, r"training\.max_checkpoints_to_keep=0: .*>= 1"),
    ("training.grad_accum_steps", 0, r"training\.grad_accum_steps=0: expected an int >= 1"),
    ("training.grad_accum_steps", 3, r"training\.batch_size=32: expected a multiple of "
     r"training\.grad_accum_steps=3"),
    ("training.ema_decay", 1.5, r"training\.ema_decay=1\.5: expected a float in \[0, 1\]"),
    ("training.seed", -1, r"training\.seed=-1: expected an int in \[0, "),
    ("training.seed", 2**63, r"training\.seed=9223372036854775808: expected an int in"),
    ("training.progress_bar", "yes", r"training\.progress_bar='yes' \(str\): expected a bool"),
    # diffusion
    ("diffusion.num_timesteps", 1, r"diffusion\.num_timesteps=1: expected an int >= 2"),
    ("diffusion.beta_start", 0.0, r"diffusion\.beta_start=0\.0: expected a float in \(0, 1\)"),
    ("diffusion.beta_end", 1.0, r"diffusion\.beta_end=1\.0: expected a float in \(0, 1\)"),
    ("diffusion.beta_start", 0.05, r"diffusion\.beta_start=0\.05: expected at most "
     r"diffusion\.beta_end=0\.02"),
    ("diffusion.schedule", "cosin", r"diffusion\.schedule='cosin': expected one of 'linear', "
     r"'scaled_linear', 'cosine'; did you mean cosine"),
    ("diffusion.prediction_type", "epsilon", r"diffusion\.prediction_type='epsilon': expected "
     r"one of 'eps', 'x0', 'v'"),
    ("diffusion.loss_weighting", "snr", r"diffusion\.loss_weighting='snr': expected one of"),
    ("diffusion.min_snr_gamma", 0.0, r"diffusion\.min_snr_gamma=0\.0: expected a float > 0"),
    ("diffusion.p_uncond", 1.0, r"diffusion\.p_uncond=1\.0: expected a float in \[0, 1\)"),
    # model
    ("model.base_channels", 0, r"model\.base_channels=0: expected an int >= 4"),
    ("model.base_channels", 16.0, r"model\.base_channels=16\.0 \(float\): expected an int"),
    ("model.channel_mults", (), r"model\.channel_mults=\(\): expected a non-empty tuple"),
    ("model.channel_mults", (1, 0), r"model\.channel_mults=\(1, 0\): expected a non-empty"),
    ("model.channel_mults", (1.0, 2.0), r"model\.channel_mults=\(1\.0, 2\.0\) \(tuple\): "
     r"expected a tuple of ints"),
    ("model.num_res_blocks", 0, r"model\.num_res_blocks=0: expected an int >= 1"),
    ("model.attention_resolutions", (0,), r"model\.attention_resolutions=\(0,\): expected"),
    ("model.attention_resolutions", 4, r"model\.attention_resolutions=4 \(int\): expected a "
     r"tuple of ints"),
    ("model.dropout", 1.0, r"model\.dropout=1\.0: expected a float in \[0, 1\)"),
    ("model.num_heads", 0, r"model\.num_heads=0: expected an int >= 1"),
    ("model.num_heads", 3, r"model\.num_heads=3: expected a divisor of the channels of every "
     r"attention block; the 32 channels of the middle block"),
    ("model.dtype", "float16", r"model\.dtype='float16': expected one of 'float32', 'bfloat16'"),
    ("model.class_conditional", 1, r"model\.class_conditional=1 \(int\): expected a bool"),
    ("model.chanels", 3, r"unknown config key 'model\.chanels'; did you mean "
     r"model\.channel_mults"),
    # optim
    ("optim.learning_rate", 0.0, r"optim\.learning_rate=0\.0: expected a float > 0"),
    ("optim.learning_rate", float("inf"), r"optim\.learning_rate=inf: expected a finite"),
    ("optim.learning_rate", "1e-3", r"optim\.learning_rate='1e-3' \(str\): expected a float"),
    ("optim.warmup_steps", -1, r"optim\.warmup_steps=-1: expected an int >= 0"),
    ("optim.weight_decay", -0.1, r"optim\.weight_decay=-0\.1: expected a float >= 0"),
    ("optim.b1", 1.0, r"optim\.b1=1\.0: expected a float in \[0, 1\)"),
    ("optim.b2", -0.5, r"optim\.b2=-0\.5: expected a float in \[0, 1\)"),
    ("optim.grad_clip_norm", -1.0, r"optim\.grad_clip_norm=-1\.0: expected a float >= 0 "
     r"\(0 disables clipping\)"),
    ("optim.grad_clip_norm", float("nan"), r"optim\.grad_clip_norm=nan: expected a finite"),
    # data
    ("data.name", "digit", r"data\.name='digit': expected one of 'digits', 'fashion_mnist', "
     r"'tfds:.*; did you mean digits"),
    ("data.name", "tfds:cifar100", r"data\.name='tfds:cifar100': expected one of"),
    ("data.image_size", -1, r"data\.image_size=-1: expected an int >= 0"),
    ("data.image_size", 32, r"data\.image_size=32: expected 0 for 'digits'"),
    ("data.num_threads", -1, r"data\.num_threads=-1: expected an int >= 0"),
    ("data.prefetch_batches", -2, r"data\.prefetch_batches=-2: expected an int >= 0"),
    ("data.path", None, r"data\.path=None \(NoneType\): expected a str"),
    ("data.split", "", r"data\.split='': expected a split name"),
    # sampling
    ("sampling.sampler", "dddim", r"sampling\.sampler='dddim': unknown sampler"),
    ("sampling.sampler", "ddim@logsnr", r"sampling\.sampler='ddim@logsnr': .*own grid"),
    ("sampling.num_steps", 0, r"sampling\.num_steps=0: expected an int >= 1"),
    ("sampling.num_steps", 2000, r"sampling\.num_steps=2000: expected at most "
     r"diffusion\.num_timesteps=1000"),
    ("sampling.eta", -1.0, r"sampling\.eta=-1\.0: expected a float >= 0"),
    ("sampling.guidance_scale", float("nan"), r"sampling\.guidance_scale=nan: expected a "
     r"finite number"),
    ("sampling.guidance_scale", None, r"sampling\.guidance_scale=None \(NoneType\): expected "
     r"a float$"),
    # model: an embedding added before a one-channel-per-group GroupNorm is erased
    ("model.scale_shift_norm", False, r"model\.scale_shift_norm=False: residual blocks of "
     r"width \[16, 32\] have one channel per GroupNorm group .*ignore t and labels"),
    ("sampling.clip_x0", 0.0, r"sampling\.clip_x0=0\.0: expected a float > 0, or None"),
    ("sampling.clip_x0", "1", r"sampling\.clip_x0='1' \(str\): expected a float or None"),
]


@pytest.mark.parametrize(
    ("key", "value", "message"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES]
)
def test_validate_config_names_each_bad_value(key, value, message):
    with pytest.raises(ValueError, match=r"invalid config \(1 problem\):\n") as info:
        config_lib.validate_config(tiny_with(key, value))
    assert re.search(message, str(info.value), re.MULTILINE), str(info.value)


def test_validate_config_accepts_the_documented_alternatives():
    config_lib.validate_config(config_lib.digits_config("tiny"))
    config_lib.validate_config(config_lib.base_config())
    config_lib.validate_config(tiny_with("sampling.clip_x0", None))  # no clipping
    config_lib.validate_config(tiny_with("optim.learning_rate", 1))  # an int is a float
    config_lib.validate_config(tiny_with("model.channel_mults", [1, 2]))  # a list
    config_lib.validate_config(tiny_with("optim.grad_clip_norm", 0.0))  # no clipping
    config_lib.validate_config(tiny_with("data.num_threads", 0))  # read in the caller
    config_lib.validate_config(tiny_with("sampling.sampler", "dpm++2m@logsnr"))
    tfds = tiny_with("data.name", "tfds:cifar10")
    tfds.data.image_size = 16
    config_lib.validate_config(tfds)
    for name in SCHEDULE_NAMES:  # the builders' names, beta range or not
        config = tiny_with("diffusion.schedule", name)
        config_lib.validate_config(config)
        assert builders.build_schedule(config.diffusion).num_timesteps == 1000


def test_validate_config_checks_the_tree():
    config = config_lib.digits_config("tiny")
    del config["sampling"]
    del config.model["dropout"]
    config.modle = ml_collections.ConfigDict({"base_channels": 8})
    config.training.wings = 2
    with pytest.raises(ValueError) as info:
        config_lib.validate_config(config)
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid config (4 problems):"
    problems = sorted(line.strip() for line in lines[1:])
    assert problems[:2] == [
        "missing config key 'model.dropout'",
        "missing config section 'sampling'",
    ]
    assert problems[2].startswith("unknown config key 'training.wings'")
    assert problems[3].startswith("unknown config section 'modle'; did you mean model")
    leaf = tiny_with("optim", 3)
    with pytest.raises(ValueError, match=r"optim=3: expected a section \(ConfigDict\)"):
        config_lib.validate_config(leaf)


def test_validate_config_lists_every_problem_at_once():
    config = config_lib.digits_config("tiny")
    config.training.num_steps = 0
    config.optim.learning_rate = float("nan")
    config.diffusion.schedule = "quadratic"
    config.model.dtype = "float64"
    config.data.prefetch_batches = -1
    config.sampling.eta = -0.5
    config.unknown_section_key = 1
    with pytest.raises(ValueError) as info:
        config_lib.validate_config(config)
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid config (7 problems):"
    named = sorted(line.strip().split("=")[0].split(" ")[0] for line in lines[1:])
    assert named == [
        "data.prefetch_batches",
        "diffusion.schedule",
        "model.dtype",
        "optim.learning_rate",
        "sampling.eta",
        "training.num_steps",
        "unknown",
    ]
    assert "unknown config key 'unknown_section_key'" in str(info.value)


def test_validate_config_with_the_image_size_checks_the_unet_levels():
    config = config_lib.digits_config("tiny")
    config.model.base_channels = 8
    config.model.num_heads = 16  # divides the middle block's 16 channels
    config_lib.validate_config(config)
    config_lib.validate_config(config, image_size=8)  # no attention on the levels
    config.model.attention_resolutions = (8,)
    config_lib.validate_config(config)  # which level that is depends on the images
    with pytest.raises(ValueError, match=r"model\.num_heads=16: .*the 8 channels of level 0"):
        config_lib.validate_config(config, image_size=8)
    config.model.attention_resolutions = ()
    with pytest.raises(ValueError, match=r"model\.channel_mults=\(1, 2\): 2 levels need an "
                       r"image side divisible by 2, got 7"):
        config_lib.validate_config(config, image_size=7)


def image_side(config):
    name = config.data.name
    if name.startswith(TFDS_PREFIX):
        return config.data.image_size or TFDS_DATASETS[name.removeprefix(TFDS_PREFIX)].image_size
    return IN_MEMORY_SIDES[name]


def test_config_specs_cover_every_config_file_and_variant():
    files = sorted(os.path.basename(p) for p in glob.glob("experiments/configs/*.py"))
    assert sorted({spec.partition(":")[0] for spec in CONFIG_SPECS}) == files
    for spec in CONFIG_SPECS:  # each variant is documented in its file
        path, _, variant = spec.partition(":")
        if variant:
            with open(os.path.join("experiments/configs", path)) as f:
                assert f"experiments/configs/{spec}" in f.read() or variant == "tfds"


@pytest.mark.parametrize("spec", CONFIG_SPECS)
def test_every_experiment_config_validates(spec):
    config = config_lib.load_config(os.path.join("experiments/configs", spec))
    config_lib.validate_config(config)
    config_lib.validate_config(config, image_size=image_side(config))
