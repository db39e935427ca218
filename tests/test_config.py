"""Pipeline configs: every shipped config validates; bad keys and values fail on one line naming them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from adept.config import ConfigError, PipelineConfig, load_config, parse_value, save_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert {path.name for path in CONFIGS} >= {"demo.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates_and_documents_itself(path, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent.parent)
    config = load_config(path)
    assert isinstance(config, PipelineConfig)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 20, "a config opens with a comment saying what it is for"
    opening = path.read_text().split("\n\n")[0]
    assert "adept run" in opening or "adept sweep" in opening, "and how to run it"
    for label in config.train.methods:
        assert config.method_settings(label).training_args["max_steps"] > 0
    from adept.benchmarks import NAMED_BENCHMARKS

    for key in ("domain_train", "domain_heldout", "general_heldout", "general_benchmarks", "domain_benchmarks"):
        for item in getattr(config.data, key):
            assert Path(item).exists() or item in NAMED_BENCHMARKS, f"{path.name}: data.{key}: {item}"


def _minimal(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    data = "" if text.startswith("data:") else "data: {domain_train: d.txt, general_probe: p.txt}\n"
    path.write_text("model: m\n" + data + text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trian: {}\n", "unknown key 'trian' (did you mean 'train'?)"),
        (
            "train: {reestimate_evry: 3}\n",
            "unknown key 'train.reestimate_evry' (did you mean 'train.reestimate_every'?)",
        ),
        ("train: {rule: {scael: 2}}\n", "unknown key 'train.rule.scael' (did you mean 'train.rule.scale'?)"),
        (
            "train: {training_args: {lerning_rate: 1}}\n",
            "unknown key 'train.training_args.lerning_rate' (did you mean 'train.training_args.learning_rate'?)",
        ),
        (
            "train: {variants: {x: {method: ful}}}\n",
            "'train.variants.x.method' is 'ful', not a method (did you mean 'full'?)",
        ),
        ("train: {variants: {x: {method: full, replay_ratoi: 0.1}}}\n", "unknown key 'train.variants.x.replay_ratoi'"),
        (
            "train: {methods: [adept, lama-pro]}\n",
            "names 'lama-pro', which is neither a method nor a variant (did you mean 'llama-pro'?)",
        ),
        ("data: {domain_train: d.txt, block_size: big}\n", "'data.block_size' must be int, got 'big'"),
        (
            "expansion: {num_new_layers: 2, trainable_fraction: 0.2}\n",
            "at most one of num_new_layers, trainable_fraction, layers",
        ),
        ("train: {rule: {rule: square}}\n", "'train.rule'"),
        ("evaluation: [1, 2]\n", "'evaluation' must be a mapping"),
        ("evaluation: {limits: {hellaswag: 0}}\n", "'evaluation.limits.hellaswag' must be a positive number, got 0"),
    ],
)
def test_bad_keys_and_values_name_the_key(tmp_path, text, message):
    path = _minimal(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = _minimal(tmp_path, "train:\n  methods: [adept\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: line \d+ invalid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    "text",
    [
        "train: {methods: [adept]}\ntrain: {methods: [full]}\n",
        "train:\n  training_args: {learning_rate: 1.0e-3, learning_rate: 1.0e-4}\n",
    ],
)
def test_a_key_given_twice_is_an_error_naming_its_line(tmp_path, text):
    # PyYAML alone keeps the last value silently; the config loader refuses.
    path = _minimal(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: line 4 invalid YAML (duplicate key ")
    assert "\n" not in str(info.value)


def test_merge_keys_may_still_be_overridden():
    assert parse_value("{<<: {a: 1, b: 2}, a: 3}") == {"a": 3, "b": 2}
    with pytest.raises(yaml.YAMLError, match="duplicate key 'a'"):
        parse_value("{a: 1, a: 3}")


def test_an_override_that_is_not_yaml_names_the_override():
    with pytest.raises(ConfigError, match=r"override 'train.methods=\[adept': invalid YAML value"):
        load_config(None, ["train.methods=[adept"])


def test_a_config_without_a_rate_gets_each_methods_default_and_a_set_rate_wins(tmp_path):
    from adept.config import DEFAULT_LEARNING_RATES, DEFAULT_TRAINING_ARGS, TrainConfig
    from adept.training import make_training_arguments

    config = load_config(_minimal(tmp_path, ""), ["train.variants.full-replay={method: full, replay_ratio: 0.25}"])
    rates = {
        label: config.method_settings(label).training_args["learning_rate"]
        for label in ("full", "full-replay", "adept", "llama-pro", "freeze", "lora")
    }
    assert rates == {
        "full": 1e-4,
        "full-replay": 1e-4,
        "adept": 1e-3,
        "llama-pro": 1e-3,
        "freeze": 1e-3,
        "lora": DEFAULT_TRAINING_ARGS["learning_rate"],
    }
    assert DEFAULT_TRAINING_ARGS["learning_rate"] not in {
        DEFAULT_LEARNING_RATES["full"],
        DEFAULT_LEARNING_RATES["adept"],
    }
    config = load_config(_minimal(tmp_path, "train: {training_args: {learning_rate: 5.0e-4}}\n"))
    assert {config.method_settings(m).training_args["learning_rate"] for m in ("full", "adept", "lora")} == {5e-4}
    # `adept train` without --learning-rate: the method's rate reaches the Trainer
    cfg = TrainConfig(model="m", data=["d.txt"], output_dir=str(tmp_path / "out"), method="full")
    assert make_training_arguments(cfg).learning_rate == 1e-4
    cfg = TrainConfig(
        model="m",
        data=["d.txt"],
        output_dir=str(tmp_path / "out"),
        method="adept",
        probe_data="p.txt",
        training_args={"learning_rate": 2e-3},
    )
    assert make_training_arguments(cfg).learning_rate == 2e-3


def test_overrides_are_typed_and_dotted_and_round_trip(tmp_path):
    path = _minimal(tmp_path, "train: {training_args: {learning_rate: 1.0e-3}}\n")
    config = load_config(
        path,
        [
            "train.training_args.max_steps=7",
            "train.methods=adept,full",
            "train.rule.floor=0.1",
            "expansion.num_new_layers=3",
            "train.variants.full.training_args.learning_rate=1e-4",
        ],
    )
    assert config.train.methods == ["adept", "full"]
    assert config.train.rule.floor == 0.1 and config.expansion.num_new_layers == 3
    assert config.method_settings("adept").training_args["max_steps"] == 7
    assert config.method_settings("adept").training_args["learning_rate"] == 1e-3
    assert config.method_settings("full").training_args["learning_rate"] == 1e-4  # YAML 1.1 reads 1e-4 as text
    saved = save_config(config, tmp_path / "resolved.yaml")
    assert load_config(saved).to_dict() == config.to_dict()
    assert yaml.safe_load(saved.read_text())["train"]["training_args"]["max_steps"] == 7
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["max_steps"])


def test_renamed_key_points_to_its_new_place(tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown key 'train.probe_max_tokens' \(did you mean 'train.probe.max_tokens'\?\)"
    ):
        load_config(_minimal(tmp_path, "train: {probe_max_tokens: 600}\n"))


def test_one_probe_object_with_the_pipelines_defaults(tmp_path):
    """`adept importance`, the importance section and the training probe share ProbeConfig's defaults."""
    from dataclasses import fields

    from adept.config import ImportanceSection, ProbeConfig, TrainConfig

    config = load_config(_minimal(tmp_path, ""))
    default = ProbeConfig()
    assert (default.max_tokens, default.max_length, default.batch_size) == (20_000, 256, 8)
    assert config.train.probe == default and config.method_settings("adept").probe == default
    assert {f.name: getattr(config.importance, f.name) for f in fields(ProbeConfig)} == vars(default)
    assert isinstance(ImportanceSection(), ProbeConfig)
    assert TrainConfig(model="m", data=["d"], output_dir="o", probe_data="p").probe == default


def _settings_classes():
    import dataclasses
    import typing

    from adept.config import PipelineConfig, TrainConfig

    seen, todo = [], [PipelineConfig, TrainConfig]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo += [hint for hint in typing.get_type_hints(cls).values() if dataclasses.is_dataclass(hint)]
    return seen


def test_every_setting_has_a_help_line():
    import dataclasses

    for cls in _settings_classes():
        for f in dataclasses.fields(cls):
            assert len(f.metadata.get("help", "")) > 10, f"{cls.__name__}.{f.name} has no help line"


def test_the_docs_list_every_config_key_as_generated_from_the_help_lines():
    from adept.config import config_reference

    root = Path(__file__).parent.parent
    assert config_reference() in (root / "docs" / "configuration.md").read_text(), (
        "docs/configuration.md is out of date; paste the output of "
        "python -c 'from adept.config import config_reference; print(config_reference())'"
    )
    assert config_reference(sections_only=True) in (root / "README.md").read_text(), (
        "README.md's configuration overview is out of date; paste the output of "
        "python -c 'from adept.config import config_reference; print(config_reference(sections_only=True))'"
    )


def test_importing_the_config_imports_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = (
        "import sys, adept.config, adept.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
