"""Reading and writing a pipeline config: one YAML file, ``key=value`` overrides, checks across sections.

`load_config` reads the YAML, applies dotted overrides and builds `PipelineConfig` (the settings
dataclasses of `adept.settings`), so an unknown key fails with the nearest valid one and a bad
value names its dotted key and the file; `save_config` writes the resolved config next to a run;
`config_reference` is the table of every key (docs/configuration.md) and the README's overview of the
sections. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from adept.artifacts import write_text

# Re-exported: these lived here before the split, and `from adept.config import X` keeps working.
from adept.config_checks import (  # noqa: F401
    ATTN_IMPLEMENTATIONS,
    DTYPES,
    DYNAMIC_METHODS,
    EXPANDED_METHODS,
    GUIDED_EXPANSION_METHODS,
    IMPORTANCE_METHODS,
    LAYER_SUBSET_METHODS,
    METHODS,
    METRICS,
    NORMALIZATIONS,
    RATE_BUDGETS,
    RULES,
    UNIT_SCORES,
    ConfigError,
    FieldError,
    UnknownKeyError,
    build,
    check_model_loading,
    check_report_to,
    check_training_args,
    did_you_mean,
    dotted_keys,
    nearest,
)
from adept.defaults import (  # noqa: F401
    BENCHMARK_SEED,
    CONVERT_DTYPE,
    DEFAULT_ATTN_IMPLEMENTATION,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_LAYER_METRIC,
    DEFAULT_LEARNING_RATES,
    DEFAULT_REFRESHES,
    DEFAULT_TEXT_FIELD,
    DEFAULT_TRAINING_ARGS,
    DEFAULT_TXT_SPLIT,
    EVAL_BATCH_SIZE,
    SHIFT_MAX_BLOCKS,
    SHIFT_TOP_K,
    default_of,
    default_training_args,
    same_as,
    setting,
)
from adept.settings import (  # noqa: F401
    DataSection,
    EvaluationSection,
    ExpansionSection,
    ImportanceSection,
    MethodSettings,
    MultiplierRule,
    PipelineConfig,
    ProbeConfig,
    SweepSection,
    TrainConfig,
    TrainSection,
    TrainSettings,
)


class _Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where ``1e-4`` is a string; here it is a float, as in YAML 1.2.

    A key given twice in one mapping is an error: PyYAML would silently keep the last one.
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys a `<<` merge brings in may be overridden; only literal repeats are errors
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: the base constructor reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d[\d_]*\.?[\d_]*|\.\d+)[eE][-+]?\d+$"), list("-+.0123456789")
)


def parse_value(text: str) -> Any:
    """A value given on the command line, read as YAML (``3``, ``1e-4``, ``true``, ``[a, b]``)."""
    return yaml.load(text, Loader=_Loader) if text.strip() else None


def parse_assignment(item: str) -> tuple[str, Any]:
    """``key=value`` -> ``(key, parsed value)``."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"'{item}' must look like key=value")
    return key.strip(), parse_value(value)


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config, apply ``key=value`` overrides (dotted keys), validate everything."""
    raw: dict[str, Any] = {}
    source = str(path) if path is not None else "<overrides>"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        try:
            raw = yaml.load(path.read_text(), Loader=_Loader) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for item in overrides or []:
        try:
            key, value = parse_assignment(item)
        except ValueError as err:
            raise ConfigError(f"override {err}, e.g. train.training_args.max_steps=100") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': invalid YAML value ({getattr(err, 'problem', err)})") from None
        set_dotted(raw, key, value)
    config = build(PipelineConfig, raw, "", source)
    _validate(config, source)
    return config


def save_config(config: PipelineConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (the first thing `adept run` does)."""
    text = "# Resolved configuration written by `adept run`; rerun with: adept run <this file>\n"
    text += yaml.safe_dump(config.to_dict(), sort_keys=False)
    return write_text(path, text)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """``tree[a][b] = value`` for ``dotted`` = ``a.b``, creating the mappings on the way."""
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _validate(config: PipelineConfig, source: str) -> None:
    """Checks across sections, which no single dataclass can make on its own."""
    if not config.model:
        raise ConfigError(f"{source}: 'model' is required (a local Hugging Face checkpoint directory or .gguf file)")
    labels = list(METHODS) + list(config.train.variants)
    for label in config.train.methods:
        if label not in labels:
            hint = did_you_mean(nearest(label, labels))
            raise ConfigError(
                f"{source}: 'train.methods' names '{label}', which is neither a method nor a variant{hint}"
            )
    if not config.train.methods:
        raise ConfigError(f"{source}: 'train.methods' is empty")
    settings = {
        label: config.method_settings(label, source) for label in [*config.train.variants, *config.train.methods]
    }
    if not config.data.domain_train:
        raise ConfigError(f"{source}: 'data.domain_train' is required (the domain corpora to learn)")
    needs_probe = any(settings[label].method in IMPORTANCE_METHODS for label in config.train.methods)
    if needs_probe and not config.data.general_probe:
        raise ConfigError(
            f"{source}: 'data.general_probe' is required by the importance stage of {', '.join(config.train.methods)}"
        )
    for label in config.train.methods:
        if settings[label].replay_ratio > 0 and not config.data.general_replay:
            raise ConfigError(f"{source}: '{label}' uses replay_ratio > 0 but 'data.general_replay' is empty")


def config_reference(sections_only: bool = False) -> str:
    """Every config key with its default and help line, as the Markdown table of docs/configuration.md;
    with ``sections_only``, the top-level keys and the sections, the README's overview."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]) and sections_only:
                inside = ", ".join(f"`{k.name}`" for k in dataclasses.fields(hints[f.name]))
                lines.append(f"| **`{prefix}{f.name}`** | keys: {inside} | {f.metadata['help']} |")
            elif dataclasses.is_dataclass(hints[f.name]):
                lines.append(f"| **`{prefix}{f.name}`** | | {f.metadata['help']} |")
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                lines.append(f"| `{prefix}{f.name}` | `{json.dumps(default_of(f))}` | {f.metadata['help']} |")

    walk(PipelineConfig, "")
    if sections_only:
        return "\n".join(lines) + "\n"
    defaults = ", ".join(f"`{key}: {json.dumps(value)}`" for key, value in DEFAULT_TRAINING_ARGS.items())
    rates = ", ".join(f"`{method}: {json.dumps(value)}`" for method, value in DEFAULT_LEARNING_RATES.items())
    return "\n".join(lines) + (
        f"\n\nadept's `TrainingArguments` defaults (`DEFAULT_TRAINING_ARGS`): {defaults}. "
        f"These methods' `learning_rate` replaces the one above (`DEFAULT_LEARNING_RATES`): {rates}.\n"
    )
