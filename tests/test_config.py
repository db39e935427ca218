"""Pipeline configs: every shipped config validates; bad keys and values fail on one line naming them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from adept.config import ConfigError, PipelineConfig, load_config, save_config

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
    assert "adept run" in path.read_text().split("\n\n")[0], "and how to run it"
    for label in config.train.methods:
        assert config.method_settings(label)["training_args"]["max_steps"] > 0
    from adept.benchmarks import NAMED_BENCHMARKS

    for key in ("domain_train", "domain_heldout", "general_heldout", "general_benchmarks", "domain_benchmarks"):
        for item in getattr(config.data, key):
            assert Path(item).exists() or item in NAMED_BENCHMARKS, f"{path.name}: data.{key}: {item}"


def _minimal(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndata: {domain_train: d.txt, general_probe: p.txt}\n" + text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trian: {}\n", "unknown key 'trian' (did you mean 'train'?)"),
        ("train: {reestimate_evry: 3}\n", "unknown key 'train.reestimate_evry' (did you mean 'train.reestimate_every'?)"),
        ("train: {rule: {scael: 2}}\n", "unknown key 'train.rule.scael' (did you mean 'train.rule.scale'?)"),
        ("train: {training_args: {lerning_rate: 1}}\n", "unknown key 'train.training_args.lerning_rate' (did you mean 'train.training_args.learning_rate'?)"),
        ("train: {variants: {x: {method: ful}}}\n", "'train.variants.x.method' is 'ful', not a method (did you mean 'full'?)"),
        ("train: {variants: {x: {method: full, replay_ratoi: 0.1}}}\n", "unknown key 'train.variants.x.replay_ratoi'"),
        ("train: {methods: [adept, lama-pro]}\n", "names 'lama-pro', which is neither a method nor a variant (did you mean 'llama-pro'?)"),
        ("data: {domain_train: d.txt, block_size: big}\n", "'data.block_size' must be int, got 'big'"),
        ("expansion: {num_new_layers: 2, trainable_fraction: 0.2}\n", "at most one of num_new_layers, trainable_fraction, layers"),
        ("train: {rule: {rule: square}}\n", "'train.rule'"),
        ("evaluation: [1, 2]\n", "'evaluation' must be a mapping"),
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


def test_overrides_are_typed_and_dotted_and_round_trip(tmp_path):
    path = _minimal(tmp_path, "train: {training_args: {learning_rate: 1.0e-3}}\n")
    config = load_config(path, ["train.training_args.max_steps=7", "train.methods=adept,full", "train.rule.floor=0.1",
                                "expansion.num_new_layers=3", "train.variants.full.training_args.learning_rate=1e-4"])
    assert config.train.methods == ["adept", "full"]
    assert config.train.rule.floor == 0.1 and config.expansion.num_new_layers == 3
    assert config.method_settings("adept")["training_args"]["max_steps"] == 7
    assert config.method_settings("adept")["training_args"]["learning_rate"] == 1e-3
    assert config.method_settings("full")["training_args"]["learning_rate"] == 1e-4  # YAML 1.1 reads 1e-4 as text
    saved = save_config(config, tmp_path / "resolved.yaml")
    assert load_config(saved).to_dict() == config.to_dict()
    assert yaml.safe_load(saved.read_text())["train"]["training_args"]["max_steps"] == 7
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["max_steps"])
