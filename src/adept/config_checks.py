"""What a setting may be, and the checks that say so in one line naming the key.

The allowed values (methods, metrics, dtypes...), the error types, the checks the settings
dataclasses (`adept.settings`) run on their values, and `build`, which makes a dataclass from a
mapping read from YAML, checking keys and value types. Neither torch nor transformers is imported
here (TrainingArguments keys are checked only when there are some).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import json
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

METHODS = ("adept", "full", "llama-pro", "adept-no-stage1", "adept-no-stage2", "freeze", "lora")
# Which methods train inserted copies (need expansion.json), which use per-unit dynamic rates.
EXPANDED_METHODS = ("adept", "llama-pro", "adept-no-stage2")
LAYER_SUBSET_METHODS = ("adept-no-stage1", "freeze")
DYNAMIC_METHODS = ("adept", "adept-no-stage1")
# Methods whose layers are chosen by Stage 1 importance (so they need a general-domain probe).
GUIDED_EXPANSION_METHODS = ("adept", "adept-no-stage2")
IMPORTANCE_METHODS = GUIDED_EXPANSION_METHODS + LAYER_SUBSET_METHODS
METRICS = ("masking", "grad_weight", "rank", "fisher")
RULES = ("linear", "inverse")
NORMALIZATIONS = ("minmax", "rank", "none")
UNIT_SCORES = ("mean", "sum")
RATE_BUDGETS = ("none", "parameters")
DTYPES = ("float32", "bfloat16", "float16", "auto")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
KEEP_MODELS = ("all", "best", "none")  # sweep.keep_models: adept.sweep_files


class ConfigError(ValueError):
    """A configuration problem, phrased as one line naming the file and the key."""


class FieldError(ValueError):
    """A bad value of one field, raised by a settings dataclass; the loader adds the dotted prefix and the file."""

    def __init__(self, key: str, problem: str, message: str | None = None):
        super().__init__(message or f"'{key}' {problem}")
        self.key, self.problem = key, problem


class UnknownKeyError(FieldError):
    """A key that is not a valid one; ``near_key`` is the nearest valid key, if any is close."""

    def __init__(self, key: str, near_key: str | None, message: str | None = None):
        super().__init__(key, "is unknown", message or f"unknown key '{key}'{did_you_mean(near_key)}")
        self.near_key = near_key


def nearest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    near = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=cutoff)
    return near[0] if near else None


def did_you_mean(near: str | None) -> str:
    """`` (did you mean 'near'?)``, or nothing when no valid word is close."""
    return f" (did you mean '{near}'?)" if near else ""


@functools.lru_cache(maxsize=1)
def _training_argument_names() -> frozenset[str]:
    import transformers  # only when there are keys to check: importing it pulls in torch

    return frozenset(f.name for f in dataclasses.fields(transformers.TrainingArguments))


def check_training_args(args: Mapping[str, Any]) -> None:
    """Every key of ``args`` must be a Hugging Face ``TrainingArguments`` field."""
    if not args:
        return
    valid = _training_argument_names()
    for key in args:
        if key not in valid:
            near = nearest(key, valid, cutoff=0.5)
            raise UnknownKeyError(
                f"training_args.{key}",
                near and f"training_args.{near}",
                f"training_args.{key} is not a TrainingArguments field{did_you_mean(near)}",
            )


def check_report_to(report_to: Any) -> None:
    """A logging backend named in ``training_args.report_to`` must be installed (the Trainer would fail later)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
        raise FieldError(
            "training_args.report_to",
            "names tensorboard, which is not installed (pip install 'adept-cpt[tensorboard]')",
        )


def deepspeed_config(value: Any) -> dict:
    """A DeepSpeed config given as a dict or a JSON path; empty when absent or unreadable here."""
    if isinstance(value, (str, os.PathLike)):
        try:
            value = json.loads(Path(value).read_text())
        except (OSError, ValueError):
            return {}  # DeepSpeed names the file itself when it loads it
    return value if isinstance(value, dict) else {}


def check_model_loading(dtype: str, attn_implementation: str) -> None:
    """``dtype`` and ``attn_implementation`` name things that exist (flash-attn must be installed to be named)."""
    if dtype not in DTYPES:
        hint = did_you_mean(nearest(dtype, DTYPES))
        raise FieldError("dtype", f"must be one of {', '.join(DTYPES)}, got '{dtype}'{hint}")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        hint = did_you_mean(nearest(attn_implementation, ATTN_IMPLEMENTATIONS))
        raise FieldError(
            "attn_implementation",
            f"must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, got '{attn_implementation}'{hint}",
        )
    if attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise FieldError(
                "attn_implementation",
                "is flash_attention_2, but the flash-attn package is not installed "
                "(pip install flash-attn, on a CUDA machine), or use sdpa",
            )


# --- a dataclass from a mapping read from YAML ----------------------------------------------


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` applied, mappings merged key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def dotted_keys(cls: type) -> list[str]:
    """Every key of dataclass ``cls``, nested sections included (``rule``, ``rule.scale``, ...)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        keys.append(f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += [f"{f.name}.{key}" for key in dotted_keys(hints[f.name])]
    return keys


def _located(err: FieldError, prefix: str, source: str) -> ConfigError:
    if isinstance(err, UnknownKeyError):
        near = f"{prefix}{err.near_key}" if err.near_key else None
        return ConfigError(f"{source}: unknown key '{prefix}{err.key}'{did_you_mean(near)}")
    return ConfigError(f"{source}: '{prefix}{err.key}' {err.problem}")


def build(cls, raw: Any, prefix: str, source: str):
    """Instantiate dataclass ``cls`` from ``raw``, checking keys and value types recursively.

    Errors are `ConfigError`s naming ``source`` (the file) and the key with its dotted ``prefix``.
    """
    where = prefix.rstrip(".") or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in {f.name for f in dataclasses.fields(cls)}:
            raise _located(UnknownKeyError(str(key), nearest(str(key), dotted_keys(cls), cutoff=0.5)), prefix, source)
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}", source)
    try:
        return cls(**kwargs)
    except FieldError as err:
        raise _located(err, prefix, source) from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: '{where}': {err}") from None


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check ``value`` against a type hint; a single string is accepted where a list of strings is."""
    if dataclasses.is_dataclass(hint):
        return build(hint, value, f"{key}.", source)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        for arg in inner:  # in order: an int stays an int under `int | float`
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                if len(inner) == 1:
                    raise
        names = " or ".join(getattr(arg, "__name__", str(arg)) for arg in inner)
        raise ConfigError(f"{source}: '{key}' must be {names}, got {value!r}")
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
        return {name: _coerce(item, args[1], f"{key}.{name}", source) for name, item in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: '{key}' must be {hint.__name__}, got {value!r}")
    return value
