"""Run configs: every value validated with a message naming its key, before anything runs.

``TrainConfig.__post_init__`` checks what is wrong anywhere; ``config.validate`` adds this
machine (devices) and the dataset (the model builds for its images); ``load_config`` names
the file and the ``--set`` overrides behind a bad value.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import yaml

from bastion.config import (
    EvalConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    dump_config,
    from_dict,
    load_config,
    read_config_file,
    validate,
)
from bastion.data import DATASET_INFO, load_dataset
from bastion.errors import BastionError, ConfigError, InputTypeError, MissingFileError
from bastion.train.schedules import ScheduleConfig

TINY = {"dataset": "digits", "model": "mlp", "model_options": {"hidden": [8]},
        "method": "standard", "epochs": 1, "batch_size": 50,
        "eval": {"attack": None, "n_test": 20}}


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


# ------------------------------------------------------------------- values and their keys


@pytest.mark.parametrize(("changes", "key", "words"), [
    ({"epochs": 0}, "config.epochs", "integer >= 1, got 0"),
    ({"batch_size": 0}, "config.batch_size", "integer >= 1, got 0"),
    ({"batch_size": -5}, "config.batch_size", ">= 1"),
    ({"train_subset": 0}, "config.train_subset", ">= 1 or null, got 0"),
    ({"patience": 0}, "config.patience", ">= 1 or null"),
    ({"seed": -1}, "config.seed", ">= 0"),
    ({"seed": 2**63}, "config.seed", "2^63"),
    ({"optim": OptimConfig(lr=float("nan"))}, "config.optim.lr", "finite number"),
    ({"optim": OptimConfig(lr=float("inf"))}, "config.optim.lr", "finite number"),
    ({"optim": OptimConfig(lr=-0.1)}, "config.optim.lr", "got -0.1"),
    ({"optim": OptimConfig(momentum=-0.5)}, "config.optim.momentum", "[0, inf)"),
    ({"optim": OptimConfig(weight_decay=float("nan"))}, "config.optim.weight_decay", "finite"),
    ({"optim": OptimConfig(name="adam", nesterov=True)}, "config.optim.nesterov", "'sgd'"),
    ({"optim": OptimConfig(name="rmsprop")}, "config.optim.name",  # type: ignore[arg-type]
     "not one of 'sgd', 'adam'"),
    ({"schedule": ScheduleConfig(milestones=(0.5, 1.5))}, "config.schedule.milestones[1]",
     "(0, 1)"),
    ({"schedule": ScheduleConfig(gamma=0.0)}, "config.schedule.gamma", "(0, inf)"),
    ({"schedule": ScheduleConfig(warmup=1.0)}, "config.schedule.warmup", "[0, 1)"),
    ({"schedule": ScheduleConfig(name="step")}, "config.schedule.name",  # type: ignore[arg-type]
     "not one of"),
    ({"eval": EvalConfig(n_test=0)}, "config.eval.n_test", ">= 1"),
    ({"eval": EvalConfig(n_train=-1)}, "config.eval.n_train", ">= 0"),
    ({"eval": EvalConfig(batch_size=0)}, "config.eval.batch_size", ">= 1"),
    ({"eval": EvalConfig(attack="cw")}, "config.eval.attack",  # type: ignore[arg-type]
     "not one of"),
    ({"dataset": "imagenet"}, "config.dataset", "'fashion-mnist'"),
    ({"method": "madry"}, "config.method", "valid choices: cat"),
    ({"method_options": {"beta": 1.0}}, "config.method_options",
     "unknown option(s) ['beta'] for method 'standard'"),
    ({"method": "trades", "method_options": {"beta": -1.0}}, "config.method_options", "beta"),
    ({"model": "vgg"}, "config.model", "valid names: lenet, lipschitz-cnn, lipschitz-mlp, mlp"),
    ({"model_options": {"width": 3}}, "config.model_options", "valid options: hidden"),
    ({"model_options": {"num_classes": 3}}, "config.model_options", "from the dataset"),
    ({"device": "foo"}, "config.device", "not a device name"),
    ({"device": ""}, "config.device", "non-empty"),
    ({"channels_last": "yes"}, "config.channels_last", "true or false"),
])
def test_every_value_is_checked_and_the_message_names_its_key(changes, key, words):
    base = from_dict(TrainConfig, TINY)
    with pytest.raises(BastionError) as err:
        dataclasses.replace(base, **changes)
    message = str(err.value)
    assert message.startswith(key + ":"), message
    assert words in message, message


def test_a_zero_learning_rate_is_allowed():
    """lr 0 freezes the weights (a run that only checks init_from, or measures the init)."""
    cfg = dataclasses.replace(from_dict(TrainConfig, TINY), optim=OptimConfig(lr=0.0))
    assert cfg.optim.lr == 0.0


def test_wrong_types_are_type_errors_naming_the_key():
    with pytest.raises(InputTypeError, match=r"^config\.epochs: expected an integer, got 'ten'"):
        from_dict(TrainConfig, {**TINY, "epochs": "ten"})
    with pytest.raises(InputTypeError, match=r"^config\.seed: expected an integer, got 1\.5"):
        from_dict(TrainConfig, {**TINY, "seed": 1.5})
    with pytest.raises(InputTypeError, match=r"config\.optim\.lr: expected a number"):
        from_dict(TrainConfig, {**TINY, "optim": {"lr": "fast"}})
    with pytest.raises(TypeError, match=r"config\.batch_size"):  # also from Python
        TrainConfig(batch_size=True)  # type: ignore[arg-type]


def test_yaml_11_exponents_are_numbers():
    """PyYAML reads ``1e-3`` as a string (YAML 1.1 wants ``1.0e-3``); a float key takes it."""
    assert from_dict(TrainConfig, {**TINY, "optim": {"lr": "1e-3"}}).optim.lr == 0.001


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"config: unknown key\(s\) \['optm'\]; valid keys: "):
        from_dict(TrainConfig, {**TINY, "optm": {"lr": 0.1}})
    with pytest.raises(ConfigError, match=r"config\.optim: unknown key\(s\) \['learning_rate'\]"):
        from_dict(TrainConfig, {**TINY, "optim": {"learning_rate": 0.1}})


def test_eval_threat_is_checked_against_the_attack():
    with pytest.raises(ConfigError, match=r"^config\.eval\.threat: eps=2 is larger than 1"):
        from_dict(TrainConfig, {**TINY, "eval": {"attack": "pgd", "threat": {"eps": 2}}})


def test_old_flat_method_options_still_load_with_a_deprecation_warning():
    flat = {**TINY, "method": "pgd-at", "method_options": {"eps": 0.1, "steps": 2}}
    with pytest.warns(DeprecationWarning, match="threat"):
        cfg = from_dict(TrainConfig, flat)
    assert cfg.method_options["threat"]["steps"] == 2
    nested = {**TINY, "method": "pgd-at", "method_options": {"threat": {"eps": 0.1, "steps": 2}}}
    assert from_dict(TrainConfig, nested) == cfg
    # and the resolved config round-trips through YAML unchanged
    assert from_dict(TrainConfig, yaml.safe_load(dump_config(cfg))) == cfg


# ---------------------------------------------------------------- this machine, this dataset


def test_validate_checks_the_device_exists_here():
    base = from_dict(TrainConfig, TINY)
    assert validate(base) is base
    assert validate(dataclasses.replace(base, device="cpu")).device == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError) as err:
            validate(dataclasses.replace(base, device="cuda"))
        assert re.search(r"^config\.device: 'cuda': this machine has no cuda device; valid "
                         r"choices on this machine: 'auto', 'cpu'", str(err.value))
    else:
        count = torch.cuda.device_count()
        with pytest.raises(ConfigError, match=f"has {count} cuda device"):
            validate(dataclasses.replace(base, device=f"cuda:{count}"))


def test_validate_builds_the_model_for_the_dataset():
    base = from_dict(TrainConfig, TINY)
    with pytest.raises(ConfigError, match=r"config\.model: model 'small-cnn' cannot be built "
                       r"for digits \(1x8x8 images\).*too small"):
        validate(dataclasses.replace(base, model="small-cnn", model_options={}))
    with pytest.raises(ConfigError, match=r"^config\.model_options: .*\{'hidden': \[-3\]\}"):
        validate(dataclasses.replace(base, model_options={"hidden": [-3]}))
    with pytest.raises(InputTypeError, match="TrainConfig"):
        validate({"epochs": 1})  # type: ignore[arg-type]


def test_dataset_info_matches_the_loader():
    info = DATASET_INFO["digits"]
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (info.train_size, info.test_size) == (len(train), len(test))
    assert info.shape == train.shape and info.num_classes == train.num_classes


# --------------------------------------------------------------------------------- files


@pytest.mark.parametrize(("text", "words"), [
    ("epochs: [1\n", "not a valid YAML config: line 2, column 1"),
    ("epochs:\t3\n", "found character '\\t'"),
    ('x: !!python/object/apply:os.system ["echo hi"]\n',
     "the tag '!!python/object/apply:os.system' is not allowed"),
    ("x: !!python/name:os.system\n", "is not allowed"),
    ("", "the config file is empty"),
    ("# only a comment\n", "the config file is empty"),
    ("- 1\n- 2\n", "must be a mapping of keys to values"),
    ("just text\n", "got a str"),
])
def test_unreadable_files_are_config_errors_naming_the_file(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: "), err.value
    assert words in str(err.value)


def test_an_explicit_empty_mapping_asks_for_the_defaults(tmp_path):
    path = tmp_path / "defaults.yaml"
    path.write_text("{}\n")
    assert read_config_file(path) == {}


def test_binary_files_and_folders_are_refused(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(ConfigError, match="not a text"):
        load_config(path)
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    with pytest.raises(MissingFileError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_load_config_names_the_file_and_the_override(recipe):
    with pytest.raises(ConfigError) as err:
        load_config(recipe, ["batch_size=0", "epochs=2"])
    assert str(err.value) == (f"config.batch_size: must be an integer >= 1, got 0 (config file "
                              f"{recipe}, with --set batch_size=0)")
    with pytest.raises(ConfigError, match=r"with --set optm.lr=0.1\)"):
        load_config(recipe, ["optm.lr=0.1"])
    bad = recipe.with_name("bad.yaml")
    bad.write_text(yaml.safe_dump({**TINY, "epochs": 0}))
    where = re.escape(f"(config file {bad})")
    with pytest.raises(ConfigError, match=rf"config.epochs: .*{where}$"):
        load_config(bad)


@pytest.mark.parametrize(("item", "words"), [
    ("batch_size", "--set expects key=value"),
    ("optim..lr=1", "the key has an empty part"),
    ("=3", "the key has an empty part"),
    ("optim.lr=[", "--set optim.lr: cannot read '[' as a YAML value"),
    ("seed=!!python/name:os.system", "the tag '!!python/name:os.system' is not allowed"),
    ("epochs.x=1", "'epochs' is not a section"),
])
def test_bad_overrides_name_the_item(item, words):
    with pytest.raises(ConfigError) as err:
        apply_overrides(dict(TINY), [item])
    assert words in str(err.value)


def test_overrides_are_applied_and_checked(recipe):
    cfg = load_config(recipe, ["optim.lr=0.05", "eval.n_test=10", "model_options.hidden=[4]"])
    assert (cfg.optim.lr, cfg.eval.n_test, cfg.model_options) == (0.05, 10, {"hidden": [4]})
    for item, key in [("optim.lr=.nan", "optim.lr"), ("optim.lr=-1", "optim.lr"),
                      ("train_subset=0", "train_subset"), ("device=foo", "device"),
                      ("eval.threat.eps=2", "eval.threat"), ("method=nope", "method")]:
        with pytest.raises(BastionError, match=rf"^config\.{re.escape(key)}: .*--set "
                           rf"{re.escape(item)}\)$"):
            load_config(recipe, [item])
