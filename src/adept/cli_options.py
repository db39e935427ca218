"""Command-line flags made from the settings dataclasses, so each setting is defined once.

`setting_options` turns the fields of a settings dataclass (`adept.settings`) into flags with the
field's name, type, default and help line; `with_options` gives a command handler those flags;
`option_values` and `settings_from_options` turn the parsed values back into config keys or the
dataclass. Below them, the flags of each command of `adept.cli`. Flags that set no config key (an
output directory, ``--overwrite``) are written by hand on the command.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING
from typing import Annotated, Any, Optional

import typer
import yaml

from adept.config import (
    DEFAULT_LEARNING_RATES,
    DEFAULT_TRAINING_ARGS,
    DataSection,
    EvaluationSection,
    ExpansionSection,
    ImportanceSection,
    PipelineConfig,
    SweepSection,
    TrainConfig,
    default_of,
    parse_assignment,
    set_dotted,
)

# What a comma-separated list of each element type is called in an error.
_ELEMENT_NAMES = {int: "integers", float: "numbers"}


@dataclasses.dataclass(frozen=True)
class SettingOption:
    """One generated flag, ``--name`` (underscores as dashes), and the config field it sets."""

    name: str
    path: str  # dotted key inside the settings dataclass
    field: dataclasses.Field
    hint: Any
    comma: bool = False  # a list given as one comma-separated value
    from_config: bool = False  # absent: the config file's value (commands that read a config), not the field's

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def setting_options(
    cls: type,
    *,
    only: tuple[str, ...] = (),
    skip: tuple[str, ...] = (),
    rename: dict[str, str] | None = None,
    nested: dict[str, str] | None = None,
    comma: tuple[str, ...] = (),
    first: tuple[str, ...] = (),
    from_config: bool = False,
) -> list[SettingOption]:
    """One flag per field of dataclass ``cls``: required ones, then ``first``, then the others in field order.

    A field is ``--field-name`` unless ``rename`` maps it to another name; the fields of a nested
    section (``rule``, ``probe``) get ``nested[section]`` in front of their own names. With
    ``from_config``, an absent flag is None and leaves the config file's value alone.
    """
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        if f.name in skip or (only and f.name not in only):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            prefix = (nested or {})[f.name]
            options += [
                dataclasses.replace(o, name=prefix + o.name, path=f"{f.name}.{o.path}")
                for o in setting_options(hints[f.name])
            ]
        else:
            name = (rename or {}).get(f.name, f.name)
            options.append(SettingOption(name, f.name, f, hints[f.name], f.name in comma, from_config))
    return sorted(options, key=lambda o: (default_of(o.field) is not MISSING, o.name not in first))


def _without_none(hint: Any) -> tuple[Any, bool]:
    """``(hint without None, whether None was allowed)``; ``int | float`` is read as a float."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return hint, False
    args = typing.get_args(hint)
    inner = [arg for arg in args if arg is not type(None)]
    if set(inner) == {int, float}:
        return float, type(None) in args
    (single,) = inner
    return single, type(None) in args


def _parameter(option: SettingOption) -> inspect.Parameter:
    hint, default = option.hint, default_of(option.field)
    inner, optional = _without_none(hint)
    if optional or inner is not hint:
        # typing.Optional, not `inner | None`: built at runtime for typer, kept a typing.Union as before.
        hint = Optional[inner] if optional else inner  # noqa: UP045
    if option.from_config:
        hint, default = Optional[str if option.comma else inner], None  # noqa: UP045
    elif option.comma:
        hint = Optional[str] if default is None else str  # noqa: UP045
        default = None if default is None else ",".join(str(item) for item in default)
    elif typing.get_origin(hint) is dict:  # NAME=VALUE, repeatable; absent: the field's default
        hint, default = Optional[list[str]], None  # noqa: UP045
    elif typing.get_origin(hint) is list and default is not MISSING:
        hint, default = Optional[hint], None  # repeatable; absent: the field's default  # noqa: UP045
    annotation = Annotated[hint, typer.Option(help=option.field.metadata["help"])]
    return inspect.Parameter(
        option.name,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=annotation,
        default=inspect.Parameter.empty if default is MISSING else default,
    )


def with_options(*groups: list[SettingOption], extra: list[inspect.Parameter] = ()) -> Callable:
    """Give a handler taking ``**values`` the generated flags and ``extra`` ones.

    In --help: the handler's own required options, the generated ones, ``extra``, then the
    handler's own options that have a default. The handler's ``setting_options`` attribute maps
    each generated parameter to its `SettingOption` (the CLI tests read it).
    """

    def decorate(func: Callable) -> Callable:
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(func, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        required = [p for p in own if p.default is inspect.Parameter.empty]
        optional = [p for p in own if p.default is not inspect.Parameter.empty]
        generated = [_parameter(option) for group in groups for option in group]
        func.__signature__ = inspect.Signature(required + generated + list(extra) + optional)
        func.setting_options = {option.name: option for group in groups for option in group}
        return func

    return decorate


def _split(option: SettingOption, text: str) -> list[Any]:
    """A comma-separated flag value as the list its field holds."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    element = typing.get_args(_without_none(option.hint)[0])[0]
    if element is str:
        return parts
    try:
        return [element(part) for part in parts]
    except ValueError:
        raise ValueError(
            f"{option.flag} must be comma-separated {_ELEMENT_NAMES.get(element, element.__name__)}, got '{text}'"
        ) from None


def _pairs(option: SettingOption, items: list[str]) -> dict[str, Any]:
    """Repeated ``NAME=VALUE`` flag values as the mapping their field holds (each value read as YAML)."""
    mapping = {}
    for item in items:
        name, sep, text = item.partition("=")
        value = yaml.safe_load(text) if sep and text.strip() else None
        if not name.strip() or value is None:
            raise ValueError(f"{option.flag} expects NAME=VALUE, got '{item}'")
        mapping[name.strip()] = value
    return mapping


def option_values(options: list[SettingOption], values: dict[str, Any]) -> dict[str, Any]:
    """Dotted config key -> value of each generated flag, taken out of ``values`` (the handler's ``**values``)."""
    settings = {}
    for option in options:
        value = values.pop(option.name)
        if option.comma and value is not None:
            value = _split(option, value)
        elif typing.get_origin(option.hint) is dict:
            value = default_of(option.field) if value is None else _pairs(option, value)
        elif value is None and typing.get_origin(option.hint) is list:
            value = default_of(option.field)
        settings[option.path] = value
    return settings


def config_overrides(options: list[SettingOption], values: dict[str, Any], section: str) -> list[str]:
    """``section.key=value`` overrides for the ``from_config`` flags given (taken out of ``values``)."""
    given = {option.path: option for option in options if values.get(option.name) is not None}
    settings = option_values(options, values)
    return [f"{section}.{path}={json.dumps(settings[path])}" for path in given]


def parse_limit(limit: float | None) -> int | float | None:
    """lm-eval reads a limit below 1 as a fraction of each benchmark, else as a question count."""
    if limit is None:
        return None
    if limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    return limit if limit < 1 else int(limit)


def settings_from_options(cls: type, options: list[SettingOption], values: dict[str, Any], **fixed: Any) -> Any:
    """The dataclass ``cls`` from the values of its generated flags (taken out of ``values``) and ``fixed``."""
    tree: dict[str, Any] = dict(fixed)
    for path, value in option_values(options, values).items():
        set_dotted(tree, path, value)
    return _instantiate(cls, tree)


def _instantiate(cls: type, tree: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(
        **{
            key: _instantiate(hints[key], value) if dataclasses.is_dataclass(hints[key]) else value
            for key, value in tree.items()
        }
    )


# --- the flags of each command --------------------------------------------------------------

DEVICE_OPTIONS = setting_options(PipelineConfig, only=("device", "dtype", "attn_implementation"))
TEXT_OPTIONS = setting_options(DataSection, only=("text_field",))
IMPORTANCE_OPTIONS = setting_options(ImportanceSection, comma=("metrics",))
EXPANSION_OPTIONS = setting_options(ExpansionSection, comma=("layers",))
TRAIN_OPTIONS = setting_options(
    TrainConfig,
    skip=("training_args",),
    rename={"output_dir": "output", "probe_data": "probe"},
    nested={"rule": "", "probe": "probe_"},
    first=("method", "probe"),
)
# `adept eval`: the data section's held-out corpora and benchmarks, named for one item (repeatable).
EVAL_DATA_OPTIONS = setting_options(
    DataSection,
    only=("general_heldout", "domain_heldout", "general_benchmarks", "domain_benchmarks", "block_size", "text_field"),
    rename={
        "general_heldout": "general",
        "domain_heldout": "domain",
        "general_benchmarks": "general_benchmark",
        "domain_benchmarks": "domain_benchmark",
    },
)
EVAL_OPTIONS = setting_options(
    EvaluationSection,
    only=("batch_size", "max_blocks", "limit", "limits", "benchmark_seed"),
    rename={"benchmark_seed": "seed"},
)
# `adept analyze shift`: the pipeline's shift settings (its batch size is evaluation.batch_size).
SHIFT_DATA_OPTIONS = setting_options(DataSection, only=("block_size", "text_field"))
SHIFT_OPTIONS = setting_options(
    EvaluationSection, only=("shift_max_blocks", "batch_size"), rename={"shift_max_blocks": "max_blocks"}
)
# The grid per method (a mapping) is set in the config or with sweep.rates.NAME=[...] overrides.
SWEEP_OPTIONS = setting_options(
    SweepSection, skip=("rates",), comma=("methods", "seeds", "alphas"), from_config=True, first=("methods", "seeds")
)

# `adept train` flags for the most used TrainingArguments fields (any other goes through --set):
# flag -> (field, help); each defaults to DEFAULT_TRAINING_ARGS[field], the learning rate to the method's.
_RATES = ", ".join(f"{method} {value:g}" for method, value in DEFAULT_LEARNING_RATES.items())
TRAINING_ARG_FLAGS = {
    "learning_rate": (
        "learning_rate",
        f"Base learning rate (multipliers scale it per unit); default by method: {_RATES}, "
        f"others {DEFAULT_TRAINING_ARGS['learning_rate']:g}.",
    ),
    "max_steps": ("max_steps", "Optimizer steps (-1: num_train_epochs, or --max-tokens, decides)."),
    "batch_size": ("per_device_train_batch_size", "Per-device training batch size."),
    "gradient_accumulation_steps": ("gradient_accumulation_steps", "Micro-batches per optimizer step."),
    "seed": ("seed", "Training seed: initialisation, data order (data_seed) and the re-estimation's probe sample."),
    "bf16": ("bf16", "bf16 autocast (default: on with --dtype bfloat16, else off)."),
    "gradient_checkpointing": ("gradient_checkpointing", "Gradient checkpointing."),
}
# Flags whose default depends on other settings (the method's rate; bf16 on with a bf16 dtype): None leaves them out.
DERIVED_DEFAULTS = {"learning_rate": float, "bf16": bool}
TRAINING_ARG_PARAMS = [
    inspect.Parameter(
        flag,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[DERIVED_DEFAULTS[name] | None, typer.Option(help=help_)],
    )
    if name in DERIVED_DEFAULTS
    else inspect.Parameter(
        flag,
        inspect.Parameter.KEYWORD_ONLY,
        default=DEFAULT_TRAINING_ARGS[name],
        annotation=Annotated[type(DEFAULT_TRAINING_ARGS[name]), typer.Option(help=help_)],
    )
    for flag, (name, help_) in TRAINING_ARG_FLAGS.items()
]


def training_args_from_flags(values: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """TrainingArguments from `adept train`'s flags (popped from ``values``) and its ``--set key=value`` items."""
    training_args = {name: values.pop(flag) for flag, (name, _) in TRAINING_ARG_FLAGS.items()}
    for name in DERIVED_DEFAULTS:  # the method's rate (default_training_args); autocast by --dtype
        if training_args[name] is None:
            del training_args[name]
    training_args["data_seed"] = training_args["seed"]
    for item in assignments:
        try:
            key, value = parse_assignment(item)
        except ValueError as err:
            raise ValueError(f"--set {err}") from None
        training_args[key] = value
    return training_args
