"""Stage 2: continual pretraining with dynamic decoupled tuning, and the baselines (paper Sec. 3.3).

Reads an expanded checkpoint and its ``expansion.json`` (or a base model plus
``importance.json`` for the no-expansion variants), freezes everything but the trainable layers,
and trains with the Hugging Face Trainer. For ``adept`` each unit gets its own optimizer group
whose rate comes from its general-domain importance, re-estimated on the probe corpus every
``reestimate_every`` steps by `AdeptCallback`. Writes checkpoints, ``unit_rates.jsonl``, the final
model and ``training_summary.json`` into the output directory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from adept.config import (
    DEFAULT_TRAINING_ARGS,
    DYNAMIC_METHODS,
    EXPANDED_METHODS,
    LAYER_SUBSET_METHODS,
    TrainConfig,
    default_training_args,
)
from adept.distributed import full_numel, is_sharded
from adept.evaluation import SUMMARY_NAME
from adept.stage2 import (
    AdeptCallback,
    AdeptTrainer,
    GuardedTrainer,
    NonFiniteLossError,
    checkpoint_dir,
    initial_copy_scores,
)

logger = logging.getLogger(__name__)

TIMING_NAME = "adept_timing.json"
RATES_LOG = "unit_rates.jsonl"
FINAL_MODEL_DIR = "model"


class NonFiniteLossGuard(TrainerCallback):
    """Stops training with a clear error when the logged loss is NaN or infinite."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss became {loss} by step {state.global_step}; stopped. "
                f"The last good checkpoint in {args.output_dir} is kept (lower the learning rate or check the data)"
            )


class StepTimer(TrainerCallback):
    """Seconds spent in optimizer steps only: forward, backward, clipping, optimizer and scheduler.

    Evaluation, checkpoint saves and importance probes run outside the timed span (this
    callback must come before `AdeptCallback`, whose refresh runs in ``on_step_end``). The
    totals are saved in every checkpoint, so a resumed run reports the time of all its steps.
    """

    def __init__(self):
        self.seconds = 0.0
        self.steps = 0
        self._start: float | None = None

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        saved = checkpoint_dir(args, state) / TIMING_NAME
        if state.global_step > 0 and saved.is_file():
            timing = json.loads(saved.read_text())
            self.seconds, self.steps = float(timing["seconds"]), int(timing["steps"])

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.seconds += self._now() - self._start
            self.steps += 1
            self._start = None

    def on_save(self, args, state, control, **kwargs):
        folder = checkpoint_dir(args, state)
        if state.is_world_process_zero and folder.is_dir():
            (folder / TIMING_NAME).write_text(json.dumps({"seconds": self.seconds, "steps": self.steps}) + "\n")


class FrozenPrefixCallback(TrainerCallback):
    """Keeps backward out of the frozen layers below the lowest trainable one.

    With activation checkpointing, transformers hooks the input embeddings so their output
    requires grad; autograd then runs backward through every frozen layer down to the
    embeddings. Non-reentrant checkpointing does not need that (only reentrant checkpointing,
    and LoRA under it, do), so the hook is removed once training has set checkpointing up.
    """

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not (getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing):
            return
        options = getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs or {}
        if options.get("use_reentrant", False):
            return
        if hasattr(model, "disable_input_require_grads"):
            model.disable_input_require_grads()


# --- which parameters train ----------------------------------------------------------------


def layer_parameter_names(model, layers: Sequence[int]) -> list[str]:
    """Names of every parameter of the given decoder layers."""
    from adept.architectures import get_architecture

    spec = get_architecture(model.config.model_type)
    wanted = set(layers)
    names = []
    for name, _ in model.named_parameters():
        parts = spec.split_layer_key(name)
        if parts is not None and parts[0] in wanted:
            names.append(name)
    return names


def freeze_all_but(model, trainable: Sequence[str]) -> None:
    wanted = set(trainable)
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)``; tied weights counted once; ZeRO-3 partitions at their full size."""
    seen: set[int] = set()
    total = trainable = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        size = full_numel(param)
        total += size
        if param.requires_grad:
            trainable += size
    return trainable, total


def make_training_arguments(cfg: TrainConfig):
    """adept's defaults for the method (`default_training_args`).

    Overridden by ``cfg.training_args`` (checked by `TrainConfig`).

    A low-precision ``cfg.dtype`` turns on the matching autocast (``bf16``/``fp16``) unless the
    config sets it, and refuses a config that turns it off: the frozen weights are then bf16 and
    the trainable ones fp32, which only autocast can multiply together. ``cfg.max_tokens``
    becomes ``max_steps`` once the world size is known.
    """
    from transformers import TrainingArguments

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


def upcast_trainable_(model) -> int:
    """Trainable parameters to float32 master weights (frozen ones keep the load dtype); returns how many moved.

    Adam's update of a bf16 weight would round away most small steps; keeping the few trainable
    tensors in fp32 costs little when the frozen base is what dominates memory.
    """
    moved = 0
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()
            moved += 1
    return moved


def trainable_layers(cfg: TrainConfig, model) -> tuple[list[int] | None, dict[str, Any] | None]:
    """Layers to train for the method, and the manifest when the model is expanded."""
    from adept.expansion import MANIFEST_NAME, load_manifest

    manifest_path = Path(cfg.model) / MANIFEST_NAME
    if cfg.method in EXPANDED_METHODS:
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{manifest_path}: method '{cfg.method}' needs an expanded checkpoint (run adept expand)"
            )
        manifest = load_manifest(manifest_path)
        if manifest["num_hidden_layers"] != model.config.num_hidden_layers:
            raise ValueError(
                f"{manifest_path}: manifest has {manifest['num_hidden_layers']} layers, the model "
                f"{model.config.num_hidden_layers}"
            )
        return [layer["layer_idx"] for layer in manifest["inserted_layers"]], manifest
    if cfg.method in LAYER_SUBSET_METHODS:
        from adept.expansion import select_least_important
        from adept.importance import ImportanceResult, load_importance

        result = ImportanceResult.from_dict(load_importance(cfg.importance))
        if result.num_layers != model.config.num_hidden_layers:
            raise ValueError(
                f"{cfg.importance}: scores for {result.num_layers} layers, model has {model.config.num_hidden_layers}"
            )
        return select_least_important(result.layer_scores(cfg.layer_metric), cfg.num_layers), None
    return None, None


def build_datasets(cfg: TrainConfig, tokenizer):
    """Packed training stream (with optional general-domain replay) and held-out sets."""
    import datasets

    from adept.data import build_packed_dataset

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
    from adept.importance import load_importance

    path = (manifest.get("selection") or {}).get("importance")
    if not path:
        return None
    try:
        payload = load_importance(path)
    except (OSError, ValueError):
        return None
    return path if payload.get("unit_grad_weight") else None


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest complete ``checkpoint-N``: one holding the trainer state, which is saved last.

    A run killed while saving leaves a checkpoint without it, and resuming from that one would
    fail; it is skipped with a warning, so the run resumes from the complete one before it.
    """
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not output_dir.is_dir():
        return None
    steps = {}
    for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if path.is_dir() and step.isdigit():
            steps[int(step)] = path
    for step in sorted(steps, reverse=True):
        if (steps[step] / TRAINER_STATE_NAME).is_file():
            return str(steps[step])
        logger.warning(
            "%s is incomplete (no %s; the run stopped while saving it): not resuming from it",
            steps[step],
            TRAINER_STATE_NAME,
        )
    return None


class PeakMemory:
    """Peak memory of one training run, comparable between methods run in the same process.

    On CUDA: ``torch.cuda.max_memory_allocated`` (weights, gradients, optimizer state,
    activations). On CPU: the peak resident set size sampled while the block runs, minus the
    resident size when the monitor was created (before the model was loaded), so the Python and
    library footprint and earlier runs in the same process do not count.
    """

    def __init__(self, interval: float = 0.02):
        import ctypes
        import gc

        gc.collect()
        try:  # hand memory freed by an earlier run in this process back to the OS first
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.interval = interval
        self.baseline = _rss_bytes()
        self.peak = self.baseline
        self._stop = None
        self._thread = None
        self.device: torch.device | None = None

    def start(self, device: torch.device) -> None:
        import threading

        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            return
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, _rss_bytes())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        """Stop sampling; returns the peak in bytes."""
        if self.device is not None and self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        return int(self.peak - self.baseline)


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc), else the lifetime peak from getrusage."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


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
    from transformers import set_seed

    from adept.artifacts import artifact_header, atomic_directory, write_json
    from adept.checkpoints import checkpoint_dtype, load_model, load_tokenizer
    from adept.data import collate_blocks, load_probe_batches
    from adept.expansion import MANIFEST_NAME, read_model_config

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

    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

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
