"""Default values used in more than one place, each written once.

The settings dataclasses (`adept.settings`) take their defaults from here, and so should the stage
runners whose keyword arguments restate one (``run_evaluation(block_size=...)``). It also holds
adept's TrainingArguments defaults and each method's base learning rate, and `setting`, the
dataclass field that carries a default with its help line. Nothing is imported: any module may use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING
from typing import Any

# Model loading (`adept run`, `adept importance`, `adept eval`, `adept analyze shift`).
DEFAULT_DEVICE = "auto"
DEFAULT_DTYPE = "float32"
DEFAULT_ATTN_IMPLEMENTATION = "sdpa"
# Weights dtype of a GGUF file dequantized into a checkpoint (`adept convert`, `convert_gguf`).
CONVERT_DTYPE = "float32"

# Corpora: tokens per packed block, the text column of tabular corpora, how .txt files split.
DEFAULT_BLOCK_SIZE = 256
DEFAULT_TEXT_FIELD = "text"
DEFAULT_TXT_SPLIT = "paragraph"

# Evaluation: blocks or benchmark requests per forward pass (the shift analysis's too), the seed of
# the named benchmarks' item subset, and the shift analysis's block count and token list length.
EVAL_BATCH_SIZE = 8
BENCHMARK_SEED = 1234
SHIFT_MAX_BLOCKS = 32
SHIFT_TOP_K = 20

# The layer metric of importance.json that chooses layers (expansion, freeze, adept-no-stage1).
DEFAULT_LAYER_METRIC = "masking"

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
DEFAULT_LEARNING_RATES: dict[str, float] = {
    "full": 1e-4,
    "adept": 1e-3,
    "llama-pro": 1e-3,
    "adept-no-stage2": 1e-3,
    "freeze": 1e-3,
}


def default_training_args(method: str) -> dict[str, Any]:
    """adept's TrainingArguments defaults for one method: `DEFAULT_TRAINING_ARGS` with its base learning rate."""
    return {
        **DEFAULT_TRAINING_ARGS,
        "learning_rate": DEFAULT_LEARNING_RATES.get(method, DEFAULT_TRAINING_ARGS["learning_rate"]),
    }


# --- settings fields ------------------------------------------------------------------------


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
