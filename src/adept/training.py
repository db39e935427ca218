"""Stage 2: continual pretraining with dynamic decoupled tuning, and the baselines (paper Sec. 3.3).

Reads an expanded checkpoint and its ``expansion.json`` (or a base model plus
``importance.json`` for the no-expansion variants), freezes everything but the trainable layers
(`adept.trainable_parameters`), and trains with the Hugging Face Trainer (`adept.trainer`) under
the run's ``TrainingArguments`` (`adept.training_args`). For ``adept`` each unit gets its own
optimizer group whose rate comes from its general-domain importance, re-estimated on the probe
corpus every ``reestimate_every`` steps by `AdeptCallback`. Writes checkpoints,
``unit_rates.jsonl``, the final model and ``training_summary.json`` into the output directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import torch
from peft import LoraConfig, get_peft_model
from transformers import TrainerCallback, set_seed

from adept.architectures import get_architecture
from adept.artifacts import artifact_header, atomic_directory, write_json
from adept.checkpoints import checkpoint_dtype, load_model, load_tokenizer, read_model_config
from adept.config import DEFAULT_TRAINING_ARGS, DYNAMIC_METHODS, TrainConfig
from adept.distributed import is_sharded
from adept.expanded_checkpoint import MANIFEST_NAME
from adept.importance import load_importance
from adept.packing import build_packed_dataset, collate_blocks
from adept.probe_batches import load_probe_batches
from adept.results import SUMMARY_NAME
from adept.stage2 import AdeptCallback, AdeptTrainer, initial_copy_scores
from adept.trainable_parameters import (
    count_parameters,
    freeze_all_but,
    layer_parameter_names,
    trainable_layers,
    upcast_trainable_,
)
from adept.trainer import (
    FrozenPrefixCallback,
    GuardedTrainer,
    NonFiniteLossGuard,
    PeakMemory,
    StepTimer,
    last_complete_checkpoint,
)
from adept.training_args import make_training_arguments, resolve_run_dtype, tokens_per_optimizer_step

logger = logging.getLogger(__name__)

RATES_LOG = "unit_rates.jsonl"
FINAL_MODEL_DIR = "model"


def build_datasets(cfg: TrainConfig, tokenizer):
    """Packed training stream (with optional general-domain replay) and held-out sets."""
    cache = cfg.cache_dir or str(Path(cfg.output_dir) / ".cache")
    options = {"cache_dir": cache, "num_proc": cfg.tokenize_workers, "text_field": cfg.text_field}
    train = build_packed_dataset(cfg.data, tokenizer, cfg.block_size, **options)
    if cfg.replay_ratio > 0:
        replay = build_packed_dataset(cfg.replay_data, tokenizer, cfg.block_size, **options)
        seed = int(cfg.training_args.get("seed", DEFAULT_TRAINING_ARGS["seed"]))
        train = datasets.interleave_datasets(
            [train, replay],
            probabilities=[1 - cfg.replay_ratio, cfg.replay_ratio],
            seed=seed,
            stopping_strategy="first_exhausted",
        )
    stems = [Path(p).stem for p in cfg.eval_data]
    evals = {}
    for path, stem in zip(cfg.eval_data, stems):
        blocks = build_packed_dataset(path, tokenizer, cfg.block_size, **options)
        if cfg.eval_max_blocks is not None:
            blocks = blocks.select(range(min(cfg.eval_max_blocks, len(blocks))))
        # general/heldout.jsonl and domain/heldout.jsonl log as eval_general_heldout_loss, ...
        evals[f"{Path(path).parent.name}_{stem}" if stems.count(stem) > 1 else stem] = blocks
    return train, evals


def _manifest_importance(manifest: Mapping[str, Any]) -> str | None:
    """The importance.json the expansion chose its layers from, if it is still there with unit scores."""
    path = (manifest.get("selection") or {}).get("importance")
    if not path:
        return None
    try:
        payload = load_importance(path)
    except (OSError, ValueError):
        return None
    return path if payload.get("unit_grad_weight") else None


def post_norm_warning(manifest: Mapping[str, Any] | None, learning_rate: float) -> str | None:
    """A warning for copies of a post-norm model: only their zeroed norm gain learns at first, so they
    grow about a hundred times slower than pre-norm copies at the same rate (docs/results_copy_growth.md)."""
    if manifest is None or not get_architecture(manifest["model_type"]).post_norms:
        return None
    return (
        f"{manifest['model_type']} is post-norm: its copies start from a zero norm gain and grow slowly at "
        f"learning rate {learning_rate:g} (on Gemma-3-270M, 32 steps: 0.9% domain-loss gain at 1e-3, 11.9% at "
        "1e-1, where SmolLM2's pre-norm copies gain 13.4% at 1e-3; docs/results_copy_growth.md); sweep the "
        "copies' rate on a grid about 100 times higher"
    )


def run_training(
    cfg: TrainConfig,
    progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
    adept_callback: type[AdeptCallback] = AdeptCallback,
    adept_trainer: type[AdeptTrainer] = AdeptTrainer,
) -> Path:
    """Train with ``cfg.method`` and write the final model and ``training_summary.json``.

    Resumes from the newest ``checkpoint-N`` in ``output_dir`` when ``cfg.resume`` is set. The
    final model goes to ``output_dir/model`` atomically, with the expansion manifest copied
    next to it so later stages know which layers are new.

    Args:
        cfg: the training settings.
        progress: show probe progress bars.
        callbacks: added to the Trainer's, after ours.
        adept_callback: the class of the Stage 2 callback for the dynamic methods (a subclass of
            `AdeptCallback`, e.g. one that records or injects rates), built with the run's probe.
        adept_trainer: the Trainer class for the dynamic methods (a subclass of `AdeptTrainer`).
    """
    memory = PeakMemory()
    output_dir = Path(cfg.output_dir)
    args = make_training_arguments(cfg)
    progress = progress and args.process_index == 0  # one set of probe bars per run, not one per rank
    read_model_config(cfg.model)
    set_seed(args.seed)
    tokenizer = load_tokenizer(cfg.model)
    # The frozen base stays in the run's dtype; the trainable weights become fp32 master weights
    # below, and the Trainer's autocast (bf16/fp16, set by make_training_arguments) mixes them.
    run_dtype = resolve_run_dtype(cfg, args.use_cpu)
    saved_dtype = checkpoint_dtype(cfg.model)
    model = load_model(cfg.model, getattr(torch, run_dtype), cfg.attn_implementation)
    layers, manifest = trainable_layers(cfg, model)
    slow_copies = post_norm_warning(manifest, args.learning_rate)  # a manifest: a method that trains copies
    if slow_copies:
        logger.warning(slow_copies)

    if cfg.method == "lora":
        model = get_peft_model(
            model,
            LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
    elif layers is not None:
        freeze_all_but(model, layer_parameter_names(model, layers))
    upcast_trainable_(model)
    trainable, total = count_parameters(model)
    logger.info(
        "method %s: %d of %d parameters trainable (%.2f%%)", cfg.method, trainable, total, 100 * trainable / total
    )

    # One process per node tokenises and writes the packed cache; the others then load it
    # (ranks racing to publish the same cache directory would crash).
    with args.main_process_first(desc="building datasets"):
        train_data, eval_data = build_datasets(cfg, tokenizer)
    resume_from = last_complete_checkpoint(output_dir) if cfg.resume else None
    timer = StepTimer()
    all_callbacks: list[TrainerCallback] = [timer, NonFiniteLossGuard()]
    if cfg.method != "lora":
        all_callbacks.append(FrozenPrefixCallback())
    rate_callback = None
    if cfg.method in DYNAMIC_METHODS:
        probe = load_probe_batches(cfg.probe_data, tokenizer, cfg.probe, seed=args.seed, text_field=cfg.text_field)
        initial, source, started = None, "initial scores", time.perf_counter()
        if manifest is not None and resume_from is None:
            importance = cfg.importance or _manifest_importance(manifest)
            if importance is None:
                model.to(args.device)
            initial, source = initial_copy_scores(model, manifest, cfg.rule, probe, importance, progress=progress)
        rate_callback = adept_callback(
            probe,
            cfg.rule,
            cfg.reestimate_every,
            log_path=output_dir / RATES_LOG,
            initial_scores=initial,
            initial_source=source,
            reestimate_fraction=cfg.reestimate_fraction,
        )
        rate_callback.seconds_spent = time.perf_counter() - started  # the source layers' probe, if any
        all_callbacks.append(rate_callback)
    all_callbacks.extend(callbacks)
    trainer_cls = adept_trainer if cfg.method in DYNAMIC_METHODS else GuardedTrainer
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data or None,
        data_collator=collate_blocks,
        callbacks=all_callbacks,
    )
    if resume_from:
        logger.info("resuming from %s", resume_from)
    start = time.perf_counter()
    memory.start(args.device)
    try:
        result = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        peak_memory = memory.stop()
    wall = time.perf_counter() - start

    final = model.merge_and_unload() if cfg.method == "lora" else model
    # Under FSDP and ZeRO-3 the weights are sharded: every rank takes part in gathering them,
    # rank 0 writes.
    state_dict = None
    if trainer.is_fsdp_enabled:
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
    elif trainer.is_deepspeed_enabled and is_sharded(list(model.parameters())):  # ZeRO-3
        state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    # Saved in the base checkpoint's dtype: a bf16 base gives a bf16 result, whatever the masters were.
    final = final.to(getattr(torch, saved_dtype))
    if state_dict is not None:
        state_dict = {
            key: value.to(getattr(torch, saved_dtype)) if value.is_floating_point() else value
            for key, value in state_dict.items()
        }
    tokens_per_step = tokens_per_optimizer_step(args, cfg.block_size)
    if trainer.is_world_process_zero():
        with atomic_directory(output_dir / FINAL_MODEL_DIR, overwrite=True) as tmp:
            final.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            if manifest is not None:
                shutil.copy2(Path(cfg.model) / MANIFEST_NAME, tmp / MANIFEST_NAME)
        summary = {
            **artifact_header("training"),
            "method": cfg.method,
            "model": cfg.model,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "trainable_share": trainable / total,
            "trainable_layers": layers,
            "dtype": run_dtype,
            "saved_dtype": saved_dtype,
            "attn_implementation": cfg.attn_implementation,
            "world_size": args.world_size,
            "tokens_per_step": tokens_per_step,
            "train_loss": result.training_loss,
            "global_step": trainer.state.global_step,
            "wall_seconds": wall,
            # Optimizer steps only (all of them, before and after a resume); evaluation, saves and
            # importance probes are reported on their own lines.
            "train_seconds": timer.seconds,
            "train_steps": timer.steps,
            "tokens_per_second": timer.steps * tokens_per_step / timer.seconds if timer.seconds > 0 else None,
            "eval_seconds": trainer.eval_seconds,
            "save_seconds": trainer.save_seconds,
            "peak_memory_bytes": peak_memory,
            "reestimation_seconds": rate_callback.seconds_spent if rate_callback else 0.0,
            # Unit multipliers at the first assignment and the last refresh, overall and per unit type.
            "multiplier_distribution": rate_callback.distribution() if rate_callback else None,
            "config": _config_dict(cfg),
            "log_history": trainer.state.log_history,
        }
        write_json(output_dir / SUMMARY_NAME, summary)
    # Every rank returns once the final model exists, so code after the call can read it on any
    # rank, and no rank tears its process group down while rank 0 is still writing.
    trainer.accelerator.wait_for_everyone()
    return output_dir / FINAL_MODEL_DIR


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))
