"""The Hugging Face ``TrainingArguments`` of a run, and the dtype it trains in.

adept's per-method defaults (`adept.defaults.default_training_args`) overridden by the run's
``training_args``; autocast matched to a low-precision ``dtype`` (frozen weights in it, trainable
ones in fp32); ``max_tokens`` turned into ``max_steps`` once the world size is known.
"""

from __future__ import annotations

import math

import torch
from transformers import TrainingArguments

from adept.config import TrainConfig, default_training_args


def make_training_arguments(cfg: TrainConfig):
    """adept's defaults for the method (`default_training_args`).

    Overridden by ``cfg.training_args`` (checked by `TrainConfig`).

    A low-precision ``cfg.dtype`` turns on the matching autocast (``bf16``/``fp16``) unless the
    config sets it, and refuses a config that turns it off: the frozen weights are then bf16 and
    the trainable ones fp32, which only autocast can multiply together. ``cfg.max_tokens``
    becomes ``max_steps`` once the world size is known.
    """
    merged = {**default_training_args(cfg.method), **cfg.training_args, "output_dir": cfg.output_dir}
    if cfg.eval_data:
        merged.setdefault("eval_strategy", "steps")
        merged.setdefault("eval_steps", merged.get("save_steps", 100))
    low = {"bfloat16": "bf16", "float16": "fp16"}.get(resolve_run_dtype(cfg, bool(merged.get("use_cpu", False))))
    if low is not None:
        if low in cfg.training_args and not cfg.training_args[low]:
            raise ValueError(
                f"dtype {cfg.dtype} needs training_args.{low}: true (autocast between the {cfg.dtype} frozen "
                f"weights and the float32 trainable ones); remove training_args.{low} or set it to true"
            )
        merged[low] = True
    args = TrainingArguments(**merged)
    if cfg.max_tokens is not None:
        tokens_per_step = tokens_per_optimizer_step(args, cfg.block_size)
        args.max_steps = math.ceil(cfg.max_tokens / tokens_per_step)
    return args


def tokens_per_optimizer_step(args, block_size: int) -> int:
    """Domain tokens one optimizer step consumes over all ranks."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * block_size


def resolve_run_dtype(cfg: TrainConfig, use_cpu: bool) -> str:
    """``cfg.dtype`` with ``auto`` resolved: bfloat16 when training on a GPU that has it, else float32."""
    if cfg.dtype != "auto":
        return cfg.dtype
    on_gpu = torch.cuda.is_available() and not use_cpu
    return "bfloat16" if on_gpu and torch.cuda.is_bf16_supported() else "float32"
