"""The pipeline configuration: one YAML file, overridable with ``key=value`` on the command line.

The schema is a tree of dataclasses, so the code, the docs and the validation cannot drift
apart: an unknown key anywhere fails with the nearest valid key, a value of the wrong type
names its dotted key and the file. Relative paths are taken from the working directory, as
the shipped configs are meant to be run from the repository root.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adept.training import DEFAULT_TRAINING_ARGS, IMPORTANCE_METHODS, METHODS
from adept.tuning import MultiplierRule


@dataclass
class DataSection:
    """Corpora and benchmarks. Lists accept one path or several.

    Attributes:
        domain_train: domain corpora for continual pretraining.
        domain_heldout: held-out domain text (gain is measured here).
        general_probe: small general-domain corpus for importance (Stage 1 and re-estimation).
        general_heldout: held-out general text (forgetting is measured here).
        general_replay: general text mixed into training by methods with ``replay_ratio > 0``.
        general_benchmarks: multiple-choice JSONL files, or lm-eval task names, for general ability.
        domain_benchmarks: the same for the domain.
        block_size: tokens per packed block, for training and held-out evaluation.
        tokenize_workers: processes that tokenise the corpora (None: one); the blocks are the
            same for any number.
    """

    domain_train: list[str] = field(default_factory=list)
    domain_heldout: list[str] = field(default_factory=list)
    general_probe: str | None = None
    general_heldout: list[str] = field(default_factory=list)
    general_replay: list[str] = field(default_factory=list)
    general_benchmarks: list[str] = field(default_factory=list)
    domain_benchmarks: list[str] = field(default_factory=list)
    block_size: int = 256
    tokenize_workers: int | None = None


@dataclass
class ImportanceSection:
    """Stage 1 scoring on ``data.general_probe`` (see `adept importance`)."""

    metrics: list[str] = field(default_factory=lambda: ["masking", "grad_weight", "rank", "fisher"])
    max_tokens: int = 20_000
    max_length: int = 256
    batch_size: int = 8
    seed: int = 0


@dataclass
class ExpansionSection:
    """How many layers to duplicate: at most one of the three; none means a quarter of the depth.

    ``llama-pro`` copies the same number of layers, spread uniformly.
    """

    num_new_layers: int | None = None
    trainable_fraction: float | None = None
    layers: list[int] | None = None
    metric: str = "masking"


@dataclass
class TrainSection:
    """Stage 2 settings shared by every method; ``variants`` overrides them per method label.

    Attributes:
        methods: what `adept run` trains (``--compare`` replaces it): names from METHODS or
            labels defined in ``variants``.
        variants: ``label: {method: full, replay_ratio: 0.25, training_args: {...}}``; a label
            equal to a method name overrides that method's settings.
        training_args: Hugging Face ``TrainingArguments`` fields.
    """

    methods: list[str] = field(default_factory=lambda: ["adept"])
    reestimate_every: int | None = None
    reestimate_fraction: float | None = None
    rule: MultiplierRule = field(default_factory=MultiplierRule)
    replay_ratio: float = 0.0
    probe_max_tokens: int = 20_000
    probe_max_length: int = 256
    probe_batch_size: int = 8
    lora_r: int = 16
    lora_alpha: int = 32
    layer_metric: str = "masking"
    training_args: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class EvaluationSection:
    """Held-out perplexity, benchmarks and the token-shift analysis after training.

    ``limit`` caps the questions per benchmark: the first ones of a JSONL file, a subset of a
    named benchmark (arc_easy, hellaswag, ...) drawn with ``benchmark_seed``, the same items
    for every model.
    """

    batch_size: int = 8
    max_blocks: int | None = None
    limit: int | None = None
    benchmark_seed: int = 1234
    shift: bool = True
    shift_data: str = "general"
    shift_max_blocks: int | None = 32


@dataclass
class PipelineConfig:
    """Everything `adept run` does, in one place (saved resolved as ``RUN_DIR/config.yaml``)."""

    model: str = ""
    run_dir: str = "runs/adept"
    device: str = "auto"
    dtype: str = "float32"
    data: DataSection = field(default_factory=DataSection)
    importance: ImportanceSection = field(default_factory=ImportanceSection)
    expansion: ExpansionSection = field(default_factory=ExpansionSection)
    train: TrainSection = field(default_factory=TrainSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def method_settings(self, label: str) -> dict[str, Any]:
        """The train section as seen by one method label: shared settings plus its variant."""
        base = asdict(self.train)
        base.pop("methods")
        base.pop("variants")
        variant = dict(self.train.variants.get(label, {}))
        method = variant.pop("method", label)
        merged = _deep_merge(base, variant)
        merged["method"] = method
        merged["training_args"] = {**DEFAULT_TRAINING_ARGS, **merged["training_args"]}
        return merged


class ConfigError(ValueError):
    """A configuration problem, phrased as one line naming the file and the key."""


_VARIANT_KEYS = {f.name for f in dataclasses.fields(TrainSection)} - {"methods", "variants"} | {"method"}


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config, apply ``key=value`` overrides (dotted keys), validate everything."""
    raw: dict[str, Any] = {}
    source = str(path) if path is not None else "<overrides>"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' must look like key=value, e.g. train.training_args.max_steps=100")
        _set_dotted(raw, key.strip(), yaml.safe_load(value) if value.strip() else None)
    config = _build(PipelineConfig, raw, "", source)
    _validate(config, source)
    return config


def save_config(config: PipelineConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (the first thing `adept run` does)."""
    from adept.artifacts import write_text

    text = "# Resolved configuration written by `adept run`; rerun with: adept run <this file>\n"
    text += yaml.safe_dump(config.to_dict(), sort_keys=False)
    return write_text(path, text)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _unknown_key(key: str, valid: set[str], prefix: str, source: str) -> ConfigError:
    near = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
    hint = f" (did you mean '{prefix}{near[0]}'?)" if near else ""
    return ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")


def _build(cls, raw: Any, prefix: str, source: str):
    """Instantiate dataclass ``cls`` from ``raw``, checking keys and value types recursively."""
    where = prefix.rstrip(".") or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    valid = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in valid:
            raise _unknown_key(str(key), valid, prefix, source)
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}", source)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: '{where}': {err}") from None


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check ``value`` against a type hint; a single string is accepted where a list of strings is."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.", source)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _coerce(value, inner, key, source)
    if origin is list:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")] if "," in value else [value]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list, got {type(value).__name__}")
        return [_coerce(item, args[0], f"{key}[{idx}]", source) for idx, item in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {type(value).__name__}")
        return _yaml_numbers(dict(value))
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 as a string
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: '{key}' must be {hint.__name__}, got {value!r}")
    return value


_EXPONENT_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _yaml_numbers(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; free-form mappings (training_args) get it as a float."""
    if isinstance(value, dict):
        return {key: _yaml_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_yaml_numbers(item) for item in value]
    if isinstance(value, str) and _EXPONENT_NUMBER.match(value):
        return float(value)
    return value


def _validate(config: PipelineConfig, source: str) -> None:
    """Cross-field checks the dataclasses cannot express on their own."""
    import transformers

    if not config.model:
        raise ConfigError(f"{source}: 'model' is required (a local Hugging Face checkpoint directory or .gguf file)")
    given = [config.expansion.num_new_layers, config.expansion.trainable_fraction, config.expansion.layers]
    if sum(value is not None for value in given) > 1:
        raise ConfigError(f"{source}: 'expansion': give at most one of num_new_layers, trainable_fraction, layers")
    if config.evaluation.shift_data not in ("general", "domain"):
        raise ConfigError(f"{source}: 'evaluation.shift_data' must be general or domain, got '{config.evaluation.shift_data}'")
    valid_args = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    for label, variant in config.train.variants.items():
        if not isinstance(variant, dict):
            raise ConfigError(f"{source}: 'train.variants.{label}' must be a mapping")
        for key in variant:
            if key not in _VARIANT_KEYS:
                raise _unknown_key(key, _VARIANT_KEYS, f"train.variants.{label}.", source)
        method = variant.get("method", label)
        if method not in METHODS:
            near = difflib.get_close_matches(str(method), METHODS, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ConfigError(f"{source}: 'train.variants.{label}.method' is '{method}', not a method{hint}")
        for key in variant.get("training_args", {}) or {}:
            if key not in valid_args:
                raise _unknown_key(key, valid_args, f"train.variants.{label}.training_args.", source)
        if isinstance(variant.get("rule"), dict):
            _build(MultiplierRule, variant["rule"], f"train.variants.{label}.rule.", source)
    for key in config.train.training_args:
        if key not in valid_args:
            raise _unknown_key(key, valid_args, "train.training_args.", source)
    labels = list(METHODS) + list(config.train.variants)
    for label in config.train.methods:
        if label not in labels:
            near = difflib.get_close_matches(label, labels, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ConfigError(f"{source}: 'train.methods' names '{label}', which is neither a method nor a variant{hint}")
    if not config.train.methods:
        raise ConfigError(f"{source}: 'train.methods' is empty")
    if not config.data.domain_train:
        raise ConfigError(f"{source}: 'data.domain_train' is required (the domain corpora to learn)")
    needs_probe = any(config.method_settings(label)["method"] in IMPORTANCE_METHODS for label in config.train.methods)
    if needs_probe and not config.data.general_probe:
        raise ConfigError(f"{source}: 'data.general_probe' is required by the importance stage of {', '.join(config.train.methods)}")
    for label in config.train.methods:
        settings = config.method_settings(label)
        if settings["replay_ratio"] > 0 and not config.data.general_replay:
            raise ConfigError(f"{source}: '{label}' uses replay_ratio > 0 but 'data.general_replay' is empty")
