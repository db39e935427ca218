"""Every setting of the package, defined once: the pipeline YAML, `adept train` and `adept importance`.

The schema is a tree of dataclasses whose fields carry their default and a help line. `adept run`
reads it from one YAML file overridable with ``key=value``; the ``train`` and ``importance``
commands build their flags from the same fields, and the training stage takes `TrainConfig`, the
``train`` settings plus its inputs. An unknown key fails with the nearest valid one, a bad value
names its dotted key and the file. Relative paths are taken from the working directory. Nothing
here imports torch or transformers (TrainingArguments keys are checked only when there are some).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

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
# Refreshes of the unit rates per run when no interval is set.
DEFAULT_REFRESHES = 10

# TrainingArguments of every training run unless the config or `adept train` sets them.
DEFAULT_TRAINING_ARGS: dict[str, Any] = {
    "learning_rate": 3e-4,  # methods not in DEFAULT_LEARNING_RATES (lora, adept-no-stage1)
    # One pass over the domain corpus unless max_steps or train.max_tokens says otherwise.
    "num_train_epochs": 1.0,
    "max_steps": -1,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,  # < 1: a fraction of the run's optimizer steps
    "weight_decay": 0.0,
    "logging_steps": 10,
    "save_steps": 100,
    "save_total_limit": 2,
    "report_to": [],
    "seed": 0,
    "data_seed": 0,
    "dataloader_num_workers": 0,
    "disable_tqdm": False,
    # The Trainer's own defaults, listed so that `adept train` shows them on its shortcut flags
    # (bf16 is not: it follows the run's dtype, see adept.training.make_training_arguments).
    "gradient_accumulation_steps": 1,
    "gradient_checkpointing": False,
}


# Base learning rate by method where the fronts on SmolLM2-135M chose one (docs/real_models.md,
# "Defaults chosen from the fronts"): the highest rate of each grid at which the general held-out
# loss rose on neither seed. Full CPT forgets above 1e-4; the methods that train a few layers
# (new zero-output copies, or freeze's existing ones) reach that point at 1e-3.
DEFAULT_LEARNING_RATES: dict[str, float] = {"full": 1e-4, "adept": 1e-3, "llama-pro": 1e-3, "adept-no-stage2": 1e-3, "freeze": 1e-3}


def default_training_args(method: str) -> dict[str, Any]:
    """adept's TrainingArguments defaults for one method: `DEFAULT_TRAINING_ARGS` with its base learning rate."""
    return {**DEFAULT_TRAINING_ARGS, "learning_rate": DEFAULT_LEARNING_RATES.get(method, DEFAULT_TRAINING_ARGS["learning_rate"])}


def setting(default: Any = MISSING, help: str = "", *, factory: Any = MISSING) -> Any:
    """A dataclass field with its help line (shown by the CLI's --help and in the README)."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": help})


def same_as(cls: type, name: str) -> Any:
    """A field with the default and help line of ``cls.name``, for a setting used in two places."""
    source = {f.name: f for f in dataclasses.fields(cls)}[name]
    return dataclasses.field(default=source.default, default_factory=source.default_factory, metadata=source.metadata)


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (a fresh one for factories); MISSING for a required field."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


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
        super().__init__(key, "is unknown", message or f"unknown key '{key}'{_hint(near_key)}")
        self.near_key = near_key


def nearest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    near = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=cutoff)
    return near[0] if near else None


def _hint(near: str | None) -> str:
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
            raise UnknownKeyError(f"training_args.{key}", near and f"training_args.{near}",
                                  f"training_args.{key} is not a TrainingArguments field{_hint(near)}")


def check_report_to(report_to: Any) -> None:
    """A logging backend named in ``training_args.report_to`` must be installed (the Trainer would fail later)."""
    import importlib.util

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
        raise FieldError("training_args.report_to", "names tensorboard, which is not installed "
                                                    "(pip install 'adept-cpt[tensorboard]')")


def _deepspeed_config(value: Any) -> dict:
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
        raise FieldError("dtype", f"must be one of {', '.join(DTYPES)}, got '{dtype}'{_hint(nearest(dtype, DTYPES))}")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        hint = _hint(nearest(attn_implementation, ATTN_IMPLEMENTATIONS))
        raise FieldError("attn_implementation", f"must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, got '{attn_implementation}'{hint}")
    if attn_implementation == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise FieldError("attn_implementation", "is flash_attention_2, but the flash-attn package is not installed "
                                                    "(pip install flash-attn, on a CUDA machine), or use sdpa")


# --- the settings ---------------------------------------------------------------------------


@dataclass
class DataSection:
    """Corpora and benchmarks (`adept run`). Lists accept one path or several."""

    domain_train: list[str] = setting(factory=list, help="Domain corpora for continual pretraining.")
    domain_heldout: list[str] = setting(factory=list, help="Held-out domain text (gain is measured here).")
    general_probe: str | None = setting(None, "Small general-domain corpus for importance (Stage 1 and re-estimation).")
    general_heldout: list[str] = setting(factory=list, help="Held-out general text (forgetting is measured here).")
    general_replay: list[str] = setting(factory=list, help="General text mixed into training by labels with replay_ratio > 0.")
    general_benchmarks: list[str] = setting(factory=list, help="Multiple-choice JSONL files, named benchmarks or lm-eval tasks for general ability.")
    domain_benchmarks: list[str] = setting(factory=list, help="The same for the domain.")
    block_size: int = setting(256, "Tokens per packed block, for training and held-out evaluation.")
    text_field: str = setting(
        "text", "Column of the text in jsonl/json/parquet/csv/arrow corpora (rows with instruction and output, or chat "
                "messages, are read without it).")
    tokenize_workers: int | None = setting(
        None, "Processes that tokenise the corpora (null: the cores available, fewer for small corpora); the blocks are "
              "the same for any number.")


@dataclass
class ProbeConfig:
    """How a general-domain probe corpus becomes batches, for Stage 1 and for Stage 2's re-estimation."""

    max_tokens: int | None = setting(20_000, "Probe token budget in target tokens (null: the whole corpus).")
    max_length: int = setting(256, "Tokens per probe example (longer documents are cut into windows).")
    batch_size: int = setting(8, "Probe examples per forward pass.")


@dataclass
class ImportanceSection(ProbeConfig):
    """Stage 1 scoring on the probe corpus (`adept importance`; ``data.general_probe`` in a pipeline)."""

    metrics: list[str] = setting(factory=lambda: list(METRICS), help=f"Importance metrics: {', '.join(METRICS)}.")
    seed: int = setting(0, "Seed of the probe sample (which documents, in which order).")


@dataclass
class ExpansionSection:
    """How many layers to duplicate: at most one of the three; none means a quarter of the depth.

    ``llama-pro`` copies the same number of layers, spread uniformly.
    """

    num_new_layers: int | None = setting(None, "Duplicate the K least important layers.")
    trainable_fraction: float | None = setting(None, "Duplicate as many least important layers as fit in this share of the expanded model.")
    layers: list[int] | None = setting(None, "0-based source layers to duplicate.")
    metric: str = setting("masking", "Layer metric of importance.json that chooses the layers.")

    def __post_init__(self) -> None:
        if sum(value is not None for value in (self.num_new_layers, self.trainable_fraction, self.layers)) > 1:
            raise ValueError("give at most one of num_new_layers, trainable_fraction, layers")


@dataclass
class MultiplierRule:
    """How unit importance becomes a learning-rate multiplier (`adept.tuning.multipliers_from_importance`).

    With ``rule='linear'`` (the paper's rule) ``m = scale * (1 - I_norm)``; with ``'inverse'``
    ``m = scale / (1 + I_norm)``. ``I_norm`` is the unit's importance normalised over *all
    trainable units together* (not per layer, not per unit type): ``minmax`` maps the least
    important unit to 0 and the most important to 1, ``rank`` uses the normalised rank, ``none``
    uses raw scores (only sensible when they already lie in [0, 1]). Multipliers are clamped to
    ``[floor, ceiling]`` so no unit is frozen by accident. When every unit has the same importance,
    every multiplier is 1 (training gives a fresh copy its source layer's scores at step 0, since
    its own zeroed output makes every |w * dL/dw| of the copy 0 there). The ``mean`` unit score
    (|w * dL/dw| averaged over the tensor's elements) is the paper's and its reference code's;
    ``sum`` (over the tensor), with min-max over all units, mostly ranks tensors by size.

    Nothing in the paper's rule holds the mean multiplier at 1: with per-element scores most units
    sit near ``scale``, so Stage 2 also raises the run's overall rate. ``rate_budget='parameters'``
    rescales the clamped multipliers by one factor (solved exactly, clamping included) so that their
    mean weighted by parameter count is 1: the units keep the paper's order and Stage 2 only
    reallocates the base rate. ``shuffle`` (ablation only) permutes the multipliers across units at
    every refresh, seeded by the training seed and the step, before any budget rescaling. The
    defaults (``none``, no shuffle) are the paper's rule.
    """

    rule: str = setting("linear", "Multiplier rule: linear (m = scale * (1 - I)) or inverse (m = scale / (1 + I)).")
    scale: float = setting(2.0, "Multiplier scale: m of the least important unit (2.0 in the paper). The mean multiplier "
                                "is not held at 1 (1.99 weighted by parameters in the demo's ADEPT run); see rate_budget.")
    normalization: str = setting("minmax", "Importance normalisation over all trainable units: minmax, rank or none.")
    unit_score: str = setting("mean", "Unit score: mean (the paper's) or sum of abs(w * dL/dw) over the tensor.")
    floor: float = setting(0.05, "Smallest multiplier.")
    ceiling: float = setting(10.0, "Largest multiplier.")
    rate_budget: str = setting(
        "none", "none (the paper's rule) or parameters: rescale the multipliers by one factor, after floor and ceiling, "
                "so their parameter-weighted mean over the trainable units is 1 (Stage 2 only reallocates the base rate).")
    shuffle: bool = setting(
        False, "Ablation only: permute the multipliers across units at every refresh (seeded by the training seed and "
               "the step), keeping their distribution but not which unit gets which.")

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("rule", self.rule, RULES),
            ("normalization", self.normalization, NORMALIZATIONS),
            ("unit_score", self.unit_score, UNIT_SCORES),
            ("rate_budget", self.rate_budget, RATE_BUDGETS),
        ):
            if value not in allowed:
                raise ValueError(f"tuning.{name} must be one of {', '.join(allowed)}, got '{value}'")
        if not 0.0 <= self.floor <= self.ceiling:
            raise ValueError(f"tuning.floor ({self.floor}) must be >= 0 and <= tuning.ceiling ({self.ceiling})")
        if self.scale <= 0:
            raise ValueError(f"tuning.scale must be positive, got {self.scale}")
        if self.rate_budget == "parameters" and not self.floor <= 1.0 <= self.ceiling:
            raise ValueError(f"tuning.rate_budget=parameters needs tuning.floor <= 1 <= tuning.ceiling (a mean multiplier "
                             f"of 1 is out of reach), got floor {self.floor} and ceiling {self.ceiling}")


@dataclass
class TrainSettings:
    """Stage 2 settings every method reads; ``train`` sets them for all, ``train.variants`` per label."""

    reestimate_every: int | None = setting(
        None, f"Refresh unit importance every N optimizer steps (0: only at step 0; null: {DEFAULT_REFRESHES} refreshes per run).")
    reestimate_fraction: float | None = setting(None, "Refresh interval as a fraction of max_steps (instead of reestimate_every).")
    rule: MultiplierRule = setting(factory=MultiplierRule, help="How unit importance becomes a learning-rate multiplier.")
    replay_ratio: float = setting(0.0, "Share of general-domain replay blocks in the training stream (0: no replay).")
    max_tokens: int | None = setting(
        None, "Training token budget: max_steps becomes ceil(max_tokens / tokens per optimizer step) (null: "
              "training_args.max_steps, else num_train_epochs).")
    probe: ProbeConfig = setting(factory=ProbeConfig, help="Probe batches of the re-estimation (sampled with the training seed).")
    lora_r: int = setting(16, "LoRA rank (method lora).")
    lora_alpha: int = setting(32, "LoRA alpha (method lora).")
    layer_metric: str = setting("masking", "Layer metric of importance.json that chooses the layers of freeze and adept-no-stage1.")
    training_args: dict[str, Any] = setting(
        factory=dict, help="Hugging Face TrainingArguments fields, over adept's defaults (default_training_args).")

    def __post_init__(self) -> None:
        if not 0.0 <= self.replay_ratio < 1.0:
            raise FieldError("replay_ratio", f"must be in [0, 1), got {self.replay_ratio}")
        if self.reestimate_every is not None and self.reestimate_fraction is not None:
            raise ValueError("set reestimate_every or reestimate_fraction, not both")
        if self.reestimate_fraction is not None and not 0 < self.reestimate_fraction <= 1:
            raise FieldError("reestimate_fraction", f"must be in (0, 1], got {self.reestimate_fraction}")
        check_training_args(self.training_args)
        check_report_to(self.training_args.get("report_to"))
        if self.max_tokens is not None:
            if self.max_tokens < 1:
                raise FieldError("max_tokens", f"must be a positive number of tokens, got {self.max_tokens}")
            if int(self.training_args.get("max_steps", -1)) > 0:
                raise FieldError("max_tokens", f"and training_args.max_steps ({self.training_args['max_steps']}) are both set; keep one")
        zero = _deepspeed_config(self.training_args.get("deepspeed")).get("zero_optimization", {})
        if zero.get("stage") == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save"):
            raise ValueError("training_args.deepspeed: ZeRO stage 3 needs zero_optimization."
                             "stage3_gather_16bit_weights_on_model_save: true to write the final model")


@dataclass
class MethodSettings(TrainSettings):
    """The Stage 2 settings of one method label: the shared ones with its variant applied."""

    method: str = setting("adept", f"Stage 2 method: {', '.join(METHODS)}.")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise FieldError("method", f"is '{self.method}', not a method{_hint(nearest(self.method, METHODS))}")
        super().__post_init__()
        fsdp_config = self.training_args.get("fsdp_config")
        if self.method in DYNAMIC_METHODS and isinstance(fsdp_config, dict) and str(fsdp_config.get("version")) == "1":
            raise ValueError(f"training_args.fsdp_config.version: method '{self.method}' (dynamic per-unit rates) needs "
                             "FSDP2 (version 2): FSDP1 flattens each module's tensors, so there are no units to score")


@dataclass
class TrainSection(TrainSettings):
    """Stage 2 of `adept run`: which labels to train, the settings they share, and per-label variants."""

    methods: list[str] = setting(
        factory=lambda: ["adept"], help="What `adept run` trains (--compare replaces it): methods or labels defined in variants.")
    variants: dict[str, dict[str, Any]] = setting(
        factory=dict, help="Per-label settings over the shared ones (method and any train key above), e.g. full-replay: "
                           "{method: full, replay_ratio: 0.25}; a label equal to a method name changes that method.")


@dataclass(kw_only=True)
class TrainConfig(MethodSettings):
    """Everything `adept.training.run_training` needs: one method's settings and its inputs.

    `adept train` builds it from its flags, `adept run` from the config (see `Pipeline.train_stage`).
    """

    model: str = setting(help="Local checkpoint: an expanded one (with expansion.json) for adept, llama-pro and "
                              "adept-no-stage2; the base model for the others.")
    data: list[str] = setting(help="Domain corpora (.txt, .jsonl, .json or dataset directories).")
    output_dir: str = setting(help="Run directory: checkpoints, unit_rates.jsonl, model/, training_summary.json.")
    probe_data: str | None = setting(None, "General-domain probe corpus for importance (adept, adept-no-stage1).")
    eval_data: list[str] = setting(factory=list, help="Held-out corpora evaluated during training.")
    eval_max_blocks: int | None = setting(None, "Evaluate at most N packed blocks of each held-out corpus during training.")
    importance: str | None = setting(
        None, "importance.json: layers of freeze and adept-no-stage1; adept's step-0 rates (default: the one named in "
              "expansion.json, else the source layers are scored on the probe).")
    num_layers: int | None = setting(None, "How many least important layers freeze and adept-no-stage1 train.")
    replay_data: list[str] = setting(factory=list, help="General-domain corpora mixed into training (with replay_ratio > 0).")
    block_size: int = same_as(DataSection, "block_size")
    text_field: str = same_as(DataSection, "text_field")
    tokenize_workers: int | None = same_as(DataSection, "tokenize_workers")
    dtype: str = setting(
        "float32", "Dtype of the loaded model: float32, bfloat16, float16 or auto (bfloat16 on a GPU that has it). "
                   "Frozen weights stay in it; trainable ones train in float32 under autocast; the final model is "
                   "saved in the base checkpoint's dtype.")
    attn_implementation: str = setting(
        "sdpa", "Attention kernel of every model load: sdpa, eager or flash_attention_2 (needs the flash-attn package).")
    cache_dir: str | None = setting(None, "Tokenised-corpus cache (null: OUTPUT_DIR/.cache).")
    resume: bool = setting(True, "Resume from the newest checkpoint in the output directory when there is one.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_model_loading(self.dtype, self.attn_implementation)
        if self.replay_ratio > 0 and not self.replay_data:
            raise ValueError("replay_ratio > 0 needs replay_data (general-domain corpora)")
        if self.method in DYNAMIC_METHODS and not self.probe_data:
            raise ValueError(f"method '{self.method}' needs a probe corpus (--probe) for importance")
        if self.method in LAYER_SUBSET_METHODS and (self.importance is None or not self.num_layers):
            raise ValueError(f"method '{self.method}' needs --importance and --num-layers to choose the layers to train")


@dataclass
class EvaluationSection:
    """Held-out perplexity, benchmarks and the token-shift analysis after training."""

    batch_size: int = setting(8, "Blocks or benchmark requests per forward pass.")
    max_blocks: int | None = setting(None, "Evaluate at most N blocks of each held-out corpus.")
    limit: int | None = setting(
        None, "At most N questions per benchmark: the first ones of a JSONL file, a subset of a named benchmark "
              "drawn with benchmark_seed (the same items for every model).")
    benchmark_seed: int = setting(1234, "Seed of the named benchmarks' item subset under limit.")
    shift: bool = setting(True, "Run the token-shift analysis of each trained model against the base model.")
    shift_data: str = setting("general", "Held-out corpus of the shift analysis: general or domain.")
    shift_max_blocks: int | None = setting(32, "Compare at most N blocks in the shift analysis.")

    def __post_init__(self) -> None:
        if self.shift_data not in ("general", "domain"):
            raise FieldError("shift_data", f"must be general or domain, got '{self.shift_data}'")


@dataclass
class PipelineConfig:
    """Everything `adept run` does, in one place (saved resolved as ``RUN_DIR/config.yaml``)."""

    model: str = setting("", "Local Hugging Face checkpoint directory or .gguf file (required).")
    run_dir: str = setting("runs/adept", "Run directory of every stage's output.")
    device: str = setting("auto", "cpu, cuda[:N] or auto.")
    dtype: str = same_as(TrainConfig, "dtype")
    attn_implementation: str = same_as(TrainConfig, "attn_implementation")
    data: DataSection = setting(factory=DataSection, help="Corpora and benchmarks.")
    importance: ImportanceSection = setting(factory=ImportanceSection, help="Stage 1 importance on data.general_probe.")
    expansion: ExpansionSection = setting(factory=ExpansionSection, help="Layer expansion.")
    train: TrainSection = setting(factory=TrainSection, help="Stage 2 training.")
    evaluation: EvaluationSection = setting(factory=EvaluationSection, help="Evaluation after training.")

    def __post_init__(self) -> None:
        check_model_loading(self.dtype, self.attn_implementation)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def method_settings(self, label: str, source: str = "the config") -> MethodSettings:
        """The train section as seen by one method label: shared settings plus its variant."""
        shared = asdict(self.train)
        del shared["methods"], shared["variants"]
        merged = _deep_merge({**shared, "method": label}, self.train.variants.get(label, {}))
        merged["training_args"] = {**default_training_args(merged["method"]), **merged["training_args"]}
        return _build(MethodSettings, merged, f"train.variants.{label}.", source)


# --- reading a config -----------------------------------------------------------------------


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
    config = _build(PipelineConfig, raw, "", source)
    _validate(config, source)
    return config


def save_config(config: PipelineConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (the first thing `adept run` does)."""
    from adept.artifacts import write_text

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


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
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
        return ConfigError(f"{source}: unknown key '{prefix}{err.key}'{_hint(near)}")
    return ConfigError(f"{source}: '{prefix}{err.key}' {err.problem}")


def _build(cls, raw: Any, prefix: str, source: str):
    """Instantiate dataclass ``cls`` from ``raw``, checking keys and value types recursively."""
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
        return _build(hint, value, f"{key}.", source)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
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
        return {name: _coerce(item, args[1], f"{key}.{name}", source) for name, item in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: '{key}' must be {hint.__name__}, got {value!r}")
    return value


def _validate(config: PipelineConfig, source: str) -> None:
    """Checks across sections, which no single dataclass can make on its own."""
    if not config.model:
        raise ConfigError(f"{source}: 'model' is required (a local Hugging Face checkpoint directory or .gguf file)")
    labels = list(METHODS) + list(config.train.variants)
    for label in config.train.methods:
        if label not in labels:
            hint = _hint(nearest(label, labels))
            raise ConfigError(f"{source}: 'train.methods' names '{label}', which is neither a method nor a variant{hint}")
    if not config.train.methods:
        raise ConfigError(f"{source}: 'train.methods' is empty")
    settings = {label: config.method_settings(label, source) for label in [*config.train.variants, *config.train.methods]}
    if not config.data.domain_train:
        raise ConfigError(f"{source}: 'data.domain_train' is required (the domain corpora to learn)")
    needs_probe = any(settings[label].method in IMPORTANCE_METHODS for label in config.train.methods)
    if needs_probe and not config.data.general_probe:
        raise ConfigError(f"{source}: 'data.general_probe' is required by the importance stage of {', '.join(config.train.methods)}")
    for label in config.train.methods:
        if settings[label].replay_ratio > 0 and not config.data.general_replay:
            raise ConfigError(f"{source}: '{label}' uses replay_ratio > 0 but 'data.general_replay' is empty")


def config_reference() -> str:
    """Every config key with its default and help line, as the Markdown table in the README."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                lines.append(f"| **`{prefix}{f.name}`** | | {f.metadata['help']} |")
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                lines.append(f"| `{prefix}{f.name}` | `{json.dumps(default_of(f))}` | {f.metadata['help']} |")

    walk(PipelineConfig, "")
    defaults = ", ".join(f"`{key}: {json.dumps(value)}`" for key, value in DEFAULT_TRAINING_ARGS.items())
    rates = ", ".join(f"`{method}: {json.dumps(value)}`" for method, value in DEFAULT_LEARNING_RATES.items())
    return "\n".join(lines) + (f"\n\nadept's `TrainingArguments` defaults (`DEFAULT_TRAINING_ARGS`): {defaults}. "
                                f"These methods' `learning_rate` replaces the one above (`DEFAULT_LEARNING_RATES`): {rates}.\n")
