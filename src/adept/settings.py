"""Every setting of the package, defined once: the pipeline YAML, and the flags of every command.

The schema is a tree of dataclasses whose fields carry their default and a help line. `adept run`
reads it from one YAML file (`adept.config.load_config`); each command builds its flags from the
same fields (`adept.cli_options`); the training stage takes `TrainConfig`, the ``train`` settings
plus its inputs. Each dataclass checks its own values (`adept.config_checks`); defaults that a
stage runner restates come from `adept.defaults`. Relative paths are taken from the working directory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from adept.config_checks import (
    DYNAMIC_METHODS,
    KEEP_MODELS,
    LAYER_SUBSET_METHODS,
    METHODS,
    METRICS,
    NORMALIZATIONS,
    RATE_BUDGETS,
    RULES,
    UNIT_SCORES,
    FieldError,
    build,
    check_model_loading,
    check_report_to,
    check_training_args,
    deep_merge,
    deepspeed_config,
    did_you_mean,
    nearest,
)
from adept.defaults import (
    BENCHMARK_SEED,
    DEFAULT_ATTN_IMPLEMENTATION,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_LAYER_METRIC,
    DEFAULT_REFRESHES,
    DEFAULT_TEXT_FIELD,
    EVAL_BATCH_SIZE,
    SHIFT_MAX_BLOCKS,
    default_training_args,
    same_as,
    setting,
)

# --- the sections -------------------------------------------------------------------------


@dataclass
class DataSection:
    """Corpora and benchmarks (`adept run`). Lists accept one path or several."""

    domain_train: list[str] = setting(factory=list, help="Domain corpora for continual pretraining.")
    domain_heldout: list[str] = setting(factory=list, help="Held-out domain text (gain is measured here).")
    general_probe: str | None = setting(None, "Small general-domain corpus for importance (Stage 1 and re-estimation).")
    general_heldout: list[str] = setting(factory=list, help="Held-out general text (forgetting is measured here).")
    general_replay: list[str] = setting(
        factory=list, help="General text mixed into training by labels with replay_ratio > 0."
    )
    general_benchmarks: list[str] = setting(
        factory=list,
        help="Multiple-choice JSONL files, named benchmarks (adept.benchmarks.NAMED_BENCHMARKS, e.g. arc_easy or "
        "hellaswag) or lm-eval tasks for general ability.",
    )
    domain_benchmarks: list[str] = setting(
        factory=list, help="Multiple-choice JSONL files, named benchmarks or lm-eval tasks for the domain."
    )
    block_size: int = setting(DEFAULT_BLOCK_SIZE, "Tokens per packed block, for training and held-out evaluation.")
    text_field: str = setting(
        DEFAULT_TEXT_FIELD,
        "Column of the text in jsonl/json/parquet/csv/arrow corpora (rows with instruction and output, or chat "
        "messages, are read without it).",
    )
    tokenize_workers: int | None = setting(
        None,
        "Processes that tokenise the corpora (null: the cores available, fewer for small corpora); the blocks are "
        "the same for any number.",
    )


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
    trainable_fraction: float | None = setting(
        None, "Duplicate as many least important layers as fit in this share of the expanded model."
    )
    layers: list[int] | None = setting(None, "0-based source layers to duplicate.")
    metric: str = setting(
        DEFAULT_LAYER_METRIC, f"Layer metric of importance.json that chooses the layers: {', '.join(METRICS)}."
    )

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
    scale: float = setting(
        2.0,
        "Multiplier scale: m of the least important unit (2.0 in the paper). The mean multiplier "
        "is not held at 1 (1.99 weighted by parameters in the demo's ADEPT run); see rate_budget.",
    )
    normalization: str = setting("minmax", "Importance normalisation over all trainable units: minmax, rank or none.")
    unit_score: str = setting("mean", "Unit score: mean (the paper's) or sum of abs(w * dL/dw) over the tensor.")
    floor: float = setting(0.05, "Smallest multiplier.")
    ceiling: float = setting(10.0, "Largest multiplier.")
    rate_budget: str = setting(
        "none",
        "none (the paper's rule) or parameters: rescale the multipliers by one factor, after floor and ceiling, "
        "so their parameter-weighted mean over the trainable units is 1 (Stage 2 only reallocates the base rate).",
    )
    shuffle: bool = setting(
        False,
        "Ablation only: permute the multipliers across units at every refresh (seeded by the training seed and "
        "the step), keeping their distribution but not which unit gets which.",
    )

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
            raise ValueError(
                f"tuning.rate_budget=parameters needs tuning.floor <= 1 <= tuning.ceiling (a mean multiplier "
                f"of 1 is out of reach), got floor {self.floor} and ceiling {self.ceiling}"
            )


@dataclass
class TrainSettings:
    """Stage 2 settings every method reads; ``train`` sets them for all, ``train.variants`` per label."""

    reestimate_every: int | None = setting(
        None,
        f"Refresh unit importance every N optimizer steps (0: only at step 0; null: {DEFAULT_REFRESHES} refreshes "
        "per run).",
    )
    reestimate_fraction: float | None = setting(
        None, "Refresh interval as a fraction of max_steps (instead of reestimate_every)."
    )
    rule: MultiplierRule = setting(
        factory=MultiplierRule, help="How unit importance becomes a learning-rate multiplier."
    )
    replay_ratio: float = setting(0.0, "Share of general-domain replay blocks in the training stream (0: no replay).")
    max_tokens: int | None = setting(
        None,
        "Training token budget: max_steps becomes ceil(max_tokens / tokens per optimizer step) (null: "
        "training_args.max_steps, else num_train_epochs).",
    )
    probe: ProbeConfig = setting(
        factory=ProbeConfig, help="Probe batches of the re-estimation (sampled with the training seed)."
    )
    lora_r: int = setting(16, "LoRA rank (method lora).")
    lora_alpha: int = setting(32, "LoRA alpha (method lora).")
    layer_metric: str = setting(
        DEFAULT_LAYER_METRIC, "Layer metric of importance.json that chooses the layers of freeze and adept-no-stage1."
    )
    training_args: dict[str, Any] = setting(
        factory=dict, help="Hugging Face TrainingArguments fields, over adept's defaults (default_training_args)."
    )

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
                raise FieldError(
                    "max_tokens",
                    f"and training_args.max_steps ({self.training_args['max_steps']}) are both set; keep one",
                )
        zero = deepspeed_config(self.training_args.get("deepspeed")).get("zero_optimization", {})
        if zero.get("stage") == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save"):
            raise ValueError(
                "training_args.deepspeed: ZeRO stage 3 needs zero_optimization."
                "stage3_gather_16bit_weights_on_model_save: true to write the final model"
            )


@dataclass
class MethodSettings(TrainSettings):
    """The Stage 2 settings of one method label: the shared ones with its variant applied."""

    method: str = setting("adept", f"Stage 2 method: {', '.join(METHODS)}.")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise FieldError("method", f"is '{self.method}', not a method{did_you_mean(nearest(self.method, METHODS))}")
        super().__post_init__()
        fsdp_config = self.training_args.get("fsdp_config")
        if self.method in DYNAMIC_METHODS and isinstance(fsdp_config, dict) and str(fsdp_config.get("version")) == "1":
            raise ValueError(
                f"training_args.fsdp_config.version: method '{self.method}' (dynamic per-unit rates) needs "
                "FSDP2 (version 2): FSDP1 flattens each module's tensors, so there are no units to score"
            )


@dataclass
class TrainSection(TrainSettings):
    """Stage 2 of `adept run`: which labels to train, the settings they share, and per-label variants."""

    methods: list[str] = setting(
        factory=lambda: ["adept"],
        help="What `adept run` trains (--compare replaces it): methods or labels defined in variants.",
    )
    variants: dict[str, dict[str, Any]] = setting(
        factory=dict,
        help="Per-label settings over the shared ones (method and any train key above), e.g. full-replay: "
        "{method: full, replay_ratio: 0.25}; a label equal to a method name changes that method.",
    )


@dataclass(kw_only=True)
class TrainConfig(MethodSettings):
    """Everything `adept.training.run_training` needs: one method's settings and its inputs.

    `adept train` builds it from its flags, `adept run` from the config (see `Pipeline.train_stage`).
    """

    model: str = setting(
        help="Local checkpoint: an expanded one (with expansion.json) for adept, llama-pro and "
        "adept-no-stage2; the base model for the others."
    )
    data: list[str] = setting(help="Domain corpora (.txt, .jsonl, .json or dataset directories).")
    output_dir: str = setting(help="Run directory: checkpoints, unit_rates.jsonl, model/, training_summary.json.")
    probe_data: str | None = setting(None, "General-domain probe corpus for importance (adept, adept-no-stage1).")
    eval_data: list[str] = setting(factory=list, help="Held-out corpora evaluated during training.")
    eval_max_blocks: int | None = setting(
        None, "Evaluate at most N packed blocks of each held-out corpus during training."
    )
    importance: str | None = setting(
        None,
        "importance.json: layers of freeze and adept-no-stage1; adept's step-0 rates (default: the one named in "
        "expansion.json, else the source layers are scored on the probe).",
    )
    num_layers: int | None = setting(None, "How many least important layers freeze and adept-no-stage1 train.")
    replay_data: list[str] = setting(
        factory=list, help="General-domain corpora mixed into training (with replay_ratio > 0)."
    )
    block_size: int = same_as(DataSection, "block_size")
    text_field: str = same_as(DataSection, "text_field")
    tokenize_workers: int | None = same_as(DataSection, "tokenize_workers")
    dtype: str = setting(
        DEFAULT_DTYPE,
        "Dtype of the loaded model: float32, bfloat16, float16 or auto (bfloat16 on a GPU that has it). "
        "Frozen weights stay in it; trainable ones train in float32 under autocast; the final model is "
        "saved in the base checkpoint's dtype.",
    )
    attn_implementation: str = setting(
        DEFAULT_ATTN_IMPLEMENTATION,
        "Attention kernel of every model load: sdpa, eager or flash_attention_2 (needs the flash-attn package).",
    )
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
            raise ValueError(
                f"method '{self.method}' needs --importance and --num-layers to choose the layers to train"
            )


@dataclass
class EvaluationSection:
    """Held-out perplexity, benchmarks and the token-shift analysis after training."""

    batch_size: int = setting(EVAL_BATCH_SIZE, "Blocks or benchmark requests per forward pass.")
    max_blocks: int | None = setting(None, "Evaluate at most N blocks of each held-out corpus.")
    limit: int | float | None = setting(
        None,
        "At most N questions per benchmark (below 1: that fraction of each): the first ones of a JSONL file, a "
        "subset of a named benchmark drawn with benchmark_seed (the same items for every model).",
    )
    limits: dict[str, int | float] = setting(
        factory=dict,
        help="Per-benchmark limit in place of limit, by the benchmark's name in the results: {hellaswag: 2000} "
        "(flag: --limits hellaswag=2000) with limit null scores every item of the others and a seeded 2,000 of "
        "HellaSwag.",
    )
    benchmark_seed: int = setting(BENCHMARK_SEED, "Seed of the named benchmarks' item subset under limit.")
    shift: bool = setting(True, "Run the token-shift analysis of each trained model against the base model.")
    shift_data: str = setting("general", "Held-out corpus of the shift analysis: general or domain.")
    shift_max_blocks: int | None = setting(SHIFT_MAX_BLOCKS, "Compare at most N blocks in the shift analysis.")

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit <= 0:
            raise FieldError("limit", f"must be positive, got {self.limit}")
        for name, value in self.limits.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise FieldError(f"limits.{name}", f"must be a positive number, got {value!r}")
        if self.shift_data not in ("general", "domain"):
            raise FieldError("shift_data", f"must be general or domain, got '{self.shift_data}'")


@dataclass
class SweepSection:
    """`adept sweep`: each method at each learning rate of its grid and each seed, then the fronts."""

    methods: list[str] = setting(help="Methods or train.variants labels to sweep (empty: train.methods).", factory=list)
    rates: dict[str, list[float]] = setting(
        help="Learning-rate grid per method or label; one not named gets its default rate and the 1-3-10 "
        "ladder's rate either side (1e-3: 3e-4, 1e-3, 3e-3).",
        factory=dict,
    )
    seeds: list[int] = setting(help="Training seeds, one run directory each: OUTPUT/seed<N>.", factory=lambda: [0])
    probe_per_seed: bool = setting(
        False, "Draw the importance probe with each seed too (importance.seed), so Stage 1 varies with the seed."
    )
    output: str | None = setting(None, "Directory of the sweep's run directories and report (default: RUN_DIR/sweep).")
    report_dir: str | None = setting(
        None,
        "Directory of the sweep's fronts.json and report/ (default: OUTPUT). Apart from OUTPUT, two sweeps share run "
        "directories, so a point both grids hold at the same settings trains once.",
    )
    reference: str | None = setting(
        None,
        "Front whose best gain the others are matched at and whose cost they are divided by "
        "(default: full if swept, else the first front).",
    )
    keep_checkpoints: bool = setting(False, "Keep each point's intermediate checkpoints (several GB each).")
    keep_models: str = setting(
        "all",
        "Trained models a sweep keeps: all; best (once a front has every rate on every seed, only its best-gain "
        "rate's, which the dial moves back; dial points' models go once evaluated); or none (each goes once "
        "evaluated; no dial). Results always stay.",
    )
    alphas: list[float] = setting(
        help="Forgetting dial: once a front's rates are done, its best-gain point (every seed) is also moved back "
        "towards its start with each alpha (adept interpolate) and evaluated, a front of its own.",
        factory=list,
    )

    def __post_init__(self) -> None:
        if self.keep_models not in KEEP_MODELS:
            raise FieldError("keep_models", f"must be one of {', '.join(KEEP_MODELS)}, got '{self.keep_models}'")
        if self.keep_models == "none" and self.alphas:
            raise FieldError("keep_models", "none leaves no model for the dial (sweep.alphas); use best")
        if any(not 0.0 < alpha < 1.0 for alpha in self.alphas):
            raise FieldError("alphas", f"must lie strictly between 0 and 1 (1 is the trained point), got {self.alphas}")


@dataclass
class PipelineConfig:
    """Everything `adept run` does, in one place (saved resolved as ``RUN_DIR/config.yaml``)."""

    model: str = setting("", "Local Hugging Face checkpoint directory or .gguf file (required).")
    run_dir: str = setting("runs/adept", "Run directory of every stage's output.")
    device: str = setting(DEFAULT_DEVICE, "cpu, cuda[:N] or auto.")
    dtype: str = same_as(TrainConfig, "dtype")
    attn_implementation: str = same_as(TrainConfig, "attn_implementation")
    data: DataSection = setting(factory=DataSection, help="Corpora and benchmarks.")
    importance: ImportanceSection = setting(factory=ImportanceSection, help="Stage 1 importance on data.general_probe.")
    expansion: ExpansionSection = setting(factory=ExpansionSection, help="Layer expansion.")
    train: TrainSection = setting(factory=TrainSection, help="Stage 2 training.")
    evaluation: EvaluationSection = setting(factory=EvaluationSection, help="Evaluation after training.")
    sweep: SweepSection = setting(factory=SweepSection, help="`adept sweep`: rate grids, seeds and fronts.")

    def __post_init__(self) -> None:
        check_model_loading(self.dtype, self.attn_implementation)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def method_settings(self, label: str, source: str = "the config") -> MethodSettings:
        """The train section as seen by one method label: shared settings plus its variant."""
        shared = asdict(self.train)
        del shared["methods"], shared["variants"]
        merged = deep_merge({**shared, "method": label}, self.train.variants.get(label, {}))
        merged["training_args"] = {**default_training_args(merged["method"]), **merged["training_args"]}
        return build(MethodSettings, merged, f"train.variants.{label}.", source)
