import json

import pytest

from diffjax import config as config_lib


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
    resumed.model.conv_weight_grad = "matmul"
    assert config_lib.checkpoint_mismatches(saved, resumed) == []


def test_saved_config_with_unknown_key_is_rejected():
    data = json.loads(config_lib.to_json(config_lib.digits_config()))
    data["model"]["wings"] = 2
    with pytest.raises(ValueError, match="model.wings"):
        config_lib.from_json(json.dumps(data))
