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
from transformers import Trainer, TrainerCallback

from adept.config import (
    DEFAULT_REFRESHES,
    DEFAULT_TRAINING_ARGS,
    DYNAMIC_METHODS,
    EXPANDED_METHODS,
    LAYER_SUBSET_METHODS,
    MultiplierRule,
    TrainConfig,
)
from adept.evaluation import SUMMARY_NAME
from adept.importance import full_numel, is_sharded, probe_share, unit_gradient_scores
from adept.tuning import (
    build_param_groups,
    current_learning_rates,
    multipliers_from_importance,
    schedule_factors,
    set_unit_multipliers,
    unit_scores_from_tensors,
)

logger = logging.getLogger(__name__)

STATE_NAME = "adept_tuning_state.json"
TIMING_NAME = "adept_timing.json"
RATES_LOG = "unit_rates.jsonl"
FINAL_MODEL_DIR = "model"


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


def check_engine(model) -> None:
    """Refuse the engines under which the probe cannot read per-unit gradients.

    DDP, FSDP2 and DeepSpeed ZeRO 1-3 are supported. FSDP1 flattens a module's tensors into one
    parameter, so there are no units to score.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    if any(isinstance(module, FullyShardedDataParallel) for module in model.modules()):
        raise ValueError(
            "dynamic per-unit rates need FSDP2: set \"version\": 2 in fsdp_config "
            "(FSDP1 flattens each wrapped module's tensors, so there are no units to score)"
        )


class AdeptCallback(TrainerCallback):
    """Assigns per-unit learning rates from general-domain importance and refreshes them.

    At step 0 (or when resuming, from the checkpoint's saved state) and then every
    ``reestimate_every`` optimizer steps, scores every trainable unit on the probe batches with
    Stage 1's code (`adept.importance.unit_gradient_scores`), converts scores to multipliers with
    ``rule`` and re-assigns rates through `adept.tuning.set_unit_multipliers`. The optimizer must
    have one group per unit as built by `adept.tuning.build_param_groups`. The probe never
    changes training: gradients, train/eval mode and RNG state are restored around it.

    A freshly inserted copy scores 0 everywhere at step 0 (its output is zeroed, so every
    gradient but the zeroed tensors' is 0), which would give every unit the same rate. Pass
    ``initial_scores`` (the source layers' scores, see `initial_copy_scores`) to start from
    differentiated rates; later refreshes score the copies themselves. Every line of the rate
    log says where its scores came from (``source``).

    Under DDP each rank scores its share of the probe batches and the sums are all-reduced; under
    FSDP2 (``fully_shard``) every rank scores all probe batches on its own parameter shards and the
    per-tensor sums are all-reduced; under DeepSpeed ZeRO 1-2 (replicated weights) as under DDP,
    under ZeRO-3 as under FSDP2. Every rank gets identical multipliers. FSDP1 is refused at the
    start of training (see `check_engine`).

    Args:
        probe_batches: padded batches from `adept.data.make_batches`.
        rule: how importance becomes multipliers.
        reestimate_every: refresh interval in optimizer steps (0: only at step 0; None: follows
            the run's length, see `resolve_reestimate_every`).
        log_path: JSONL file for the rates (rank 0 writes it); ``None`` to skip.
        progress: show probe progress bars.
        initial_scores: unit scores to use at step 0 instead of probing the units themselves.
        initial_source: where ``initial_scores`` come from, recorded in the rate log.
        reestimate_fraction: refresh interval as a fraction of the run's steps (with
            ``reestimate_every`` None).
    """

    def __init__(
        self,
        probe_batches: Sequence[dict],
        rule: MultiplierRule | None = None,
        reestimate_every: int | None = None,
        log_path: str | os.PathLike | None = None,
        progress: bool = False,
        initial_scores: Mapping[str, float] | None = None,
        initial_source: str = "initial scores",
        reestimate_fraction: float | None = None,
    ):
        if reestimate_every is not None and reestimate_every < 0:
            raise ValueError(f"reestimate_every must be >= 0, got {reestimate_every}")
        self.probe_batches = list(probe_batches)
        self.rule = rule or MultiplierRule()
        self.reestimate_every = reestimate_every
        self.reestimate_fraction = reestimate_fraction
        self.interval = reestimate_every  # None: resolved from the run's length in on_train_begin
        self.log_path = Path(log_path) if log_path is not None else None
        self.progress = progress
        self.initial_scores = dict(initial_scores) if initial_scores is not None else None
        self.initial_source = initial_source
        self.history: list[dict[str, Any]] = []
        self.multipliers: dict[str, float] = {}
        self.seconds_spent = 0.0
        self.source = "probe"
        self._pending_initial: dict[str, float] | None = None

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"multipliers": self.multipliers, "history": self.history, "reestimate_every": self.interval,
                "rule": asdict(self.rule), "seconds_spent": self.seconds_spent}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.multipliers = {k: float(v) for k, v in state["multipliers"].items()}
        self.history = list(state["history"])
        self.seconds_spent = float(state.get("seconds_spent", 0.0))

    def due(self, step: int, max_steps: int) -> bool:
        # Callers that drive the callback themselves (no on_train_begin) get the interval resolved here.
        every = self.interval if self.interval is not None else resolve_reestimate_every(None, self.reestimate_fraction, max_steps)
        return every > 0 and step % every == 0 and step < max_steps

    # -- the estimate ----------------------------------------------------------------------------
    def estimate(self, model) -> tuple[dict[str, float], dict[str, float]]:
        """Importance of every trainable unit, combined over ranks (see `unit_gradient_scores`).

        At step 0 of a run given ``initial_scores``, those are returned instead of a probe.
        """
        if self._pending_initial is not None:
            scores, self._pending_initial = self._pending_initial, None
            self.source = self.initial_source
            return scores, multipliers_from_importance(scores, self.rule)
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        names, params = [n for n, _ in named], [p for _, p in named]
        batches = probe_share(self.probe_batches, params)
        grad_weight, _, _, _ = unit_gradient_scores(model, batches, params, progress=self.progress, all_reduce=True)
        scores = unit_scores_from_tensors(names, grad_weight, params, self.rule.unit_score)
        if self.multipliers and len(set(scores.values())) == 1:
            # Copies that have not moved yet (e.g. a zero learning rate during warmup) all still
            # score 0: that says nothing about the units, so the current rates stay.
            self.source = "probe (all scores equal: rates kept)"
            return scores, dict(self.multipliers)
        self.source = "probe"
        return scores, multipliers_from_importance(scores, self.rule)

    def reestimate(self, model, optimizer, scheduler, step: int, is_main: bool) -> None:
        start = time.perf_counter()
        scores, multipliers = self.estimate(model)
        set_unit_multipliers(optimizer, scheduler, multipliers)
        self.multipliers = multipliers
        entry = {"step": step, "source": self.source, "importance": scores, "multipliers": multipliers,
                 "lr": current_learning_rates(optimizer)}
        self.history.append({"step": step, "source": self.source, "importance": scores, "multipliers": multipliers})
        self.seconds_spent += time.perf_counter() - start
        if is_main and self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as handle:
                handle.write(json.dumps(entry) + "\n")
        logger.info("step %d: re-assigned %d unit rates from %s (multipliers %.3f-%.3f)", step, len(multipliers),
                    self.source, min(multipliers.values()), max(multipliers.values()))

    # -- Trainer events ----------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        check_engine(model)
        self.interval = resolve_reestimate_every(self.reestimate_every, self.reestimate_fraction, state.max_steps)
        if state.global_step == 0:
            if self.log_path is not None and state.is_world_process_zero and self.log_path.exists():
                self.log_path.unlink()
            self._pending_initial = self.initial_scores
            self.reestimate(model, optimizer, lr_scheduler, 0, state.is_world_process_zero)
            return
        saved = _checkpoint_dir(args, state) / STATE_NAME
        if not saved.is_file():
            logger.warning("%s not found; re-estimating importance at step %d", saved, state.global_step)
            self.reestimate(model, optimizer, lr_scheduler, state.global_step, state.is_world_process_zero)
            return
        self.load_state_dict(json.loads(saved.read_text()))
        # The optimizer and scheduler states restored by the Trainer already carry these rates;
        # re-applying them is a consistency check that costs nothing.
        set_unit_multipliers(optimizer, lr_scheduler, self.multipliers)
        if self.log_path is not None and state.is_world_process_zero:
            _truncate_log(self.log_path, state.global_step)

    def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if self.due(state.global_step, state.max_steps):
            self.reestimate(model, optimizer, lr_scheduler, state.global_step, state.is_world_process_zero)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = _checkpoint_dir(args, state)
            if folder.is_dir():
                (folder / STATE_NAME).write_text(json.dumps(self.state_dict()) + "\n")


def resolve_reestimate_every(every: int | None, fraction: float | None, max_steps: int) -> int:
    """The refresh interval in optimizer steps: explicit, a fraction of the run, or by default
    ``DEFAULT_REFRESHES`` refreshes per run, so a short run is not left with step 0 alone.

    Warns (once per run) when the rates would never be refreshed after step 0.
    """
    if every is None:
        share = fraction if fraction is not None else 1.0 / DEFAULT_REFRESHES
        every = max(1, int(round(share * max_steps))) if max_steps > 0 else 0
    if max_steps > 0 and (every == 0 or every >= max_steps):
        logger.warning(
            "reestimate_every=%d with max_steps=%d: importance is estimated at step 0 only and never refreshed "
            "(lower train.reestimate_every / --reestimate-every, or leave it unset for %d refreshes per run)",
            every, max_steps, DEFAULT_REFRESHES,
        )
    return every


def initial_copy_scores(
    model, manifest: Mapping[str, Any], rule: MultiplierRule, probe_batches: Sequence[dict] | None = None,
    importance: str | os.PathLike | None = None, progress: bool = False,
) -> tuple[dict[str, float], str]:
    """Step-0 scores for the units of freshly inserted copies: their source layers' scores.

    A copy's tensors equal its source's except the ones set to make it an identity, and those
    get the score of the source tensor they were copied from. The scores come from Stage 1's
    ``importance.json`` when given (its per-element mean or sum, as ``rule.unit_score`` says),
    otherwise from scoring the source layers (frozen, unchanged by expansion) on the probe.

    Returns ``(scores by trainable parameter name, source description)``.
    """
    from adept.architectures import get_architecture

    spec = get_architecture(model.config.model_type)
    source_of = {layer["layer_idx"]: layer["source_layer_idx"] for layer in manifest["inserted_layers"]}
    layer_map = {int(old): new for old, new in manifest["layer_map"].items()}
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    units = {}
    for name in names:
        parts = spec.split_layer_key(name)
        if parts is None or parts[0] not in source_of:
            raise ValueError(f"trainable parameter '{name}' is not in a layer the manifest lists as inserted")
        units[name] = (source_of[parts[0]], parts[1])
    if importance is not None:
        from adept.importance import ImportanceResult
        from adept.stages import load_importance

        result = ImportanceResult.from_dict(load_importance(importance))
        if result.num_layers != manifest["source_num_layers"]:
            raise ValueError(f"{importance}: scores for a {result.num_layers}-layer model, but the expanded model "
                             f"was made from {manifest['source_num_layers']} layers")
        grid = result.unit_grad_weight_mean if rule.unit_score == "mean" else result.unit_grad_weight
        if not grid:
            raise ValueError(f"{importance}: has no unit scores (compute it with the grad_weight metric)")
        scores = {}
        for name, (source, unit) in units.items():
            if source not in result.layers or unit not in result.unit_names:
                raise ValueError(f"{importance}: no score for unit '{unit}' of layer {source}")
            scores[name] = float(grid[result.layers.index(source)][result.unit_names.index(unit)])
        return scores, f"importance.json of the source layers ({importance})"
    if probe_batches is None:
        raise ValueError("initial_copy_scores needs probe batches or an importance.json")
    params_by_name = dict(model.named_parameters())
    source_params = [params_by_name[spec.layer_key(layer_map[source], unit)] for source, unit in units.values()]
    if is_sharded(source_params):
        raise ValueError("under DeepSpeed ZeRO-3 the step-0 rates need Stage 1's scores: pass --importance "
                         "importance.json (train.importance) for the source layers")
    batches = probe_share(probe_batches, source_params)
    grad_weight, _, _, _ = unit_gradient_scores(model, batches, source_params, progress=progress, all_reduce=True)
    return unit_scores_from_tensors(names, grad_weight, source_params, rule.unit_score), "source layers on the probe"


def _checkpoint_dir(args, state) -> Path:
    """The Trainer's checkpoint folder for the current step (where our callbacks keep their state)."""
    return Path(args.output_dir) / f"checkpoint-{state.global_step}"


def read_rate_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of a ``unit_rates.jsonl`` written by `AdeptCallback`, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` (by a run that died before its next checkpoint)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in lines))


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
        saved = _checkpoint_dir(args, state) / TIMING_NAME
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
        folder = _checkpoint_dir(args, state)
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


class _AdeptTrainerBase(Trainer):
    """The Trainer plus a NaN/inf guard and the time spent in evaluation and checkpoint saves."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_seconds = 0.0
        self.save_seconds = 0.0

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at step {self.state.global_step + 1}; stopped. "
                f"The last good checkpoint in {self.args.output_dir} is kept (lower the learning rate or check the data)"
            )
        return loss

    def evaluate(self, *args, **kwargs):
        # With several eval sets, Trainer.evaluate calls itself once per set: count the outer call only.
        if getattr(self, "_in_evaluate", False):
            return super().evaluate(*args, **kwargs)
        self._in_evaluate = True
        start = time.perf_counter()
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._in_evaluate = False
            self.eval_seconds += time.perf_counter() - start

    def _save_checkpoint(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super()._save_checkpoint(*args, **kwargs)
        finally:
            self.save_seconds += time.perf_counter() - start


class AdeptTrainer(_AdeptTrainerBase):
    """A Trainer whose optimizer has one group per trainable unit, and that refuses NaN/inf loss.

    Logs the base learning rate (the schedule applied to ``learning_rate``; each unit trains at
    it times its multiplier) and the smallest, mean and largest multiplier.
    """

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = model if model is not None else self.model
            trainable = [name for name, p in model.named_parameters() if p.requires_grad]
            groups = build_param_groups(model, trainable, self.args.learning_rate, self.args.weight_decay)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _get_learning_rate(self) -> float:
        group = self.optimizer.param_groups[0]
        if "base_lr" not in group:
            return super()._get_learning_rate()
        return group["base_lr"] * schedule_factors(self.optimizer, self.lr_scheduler)[0]

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "learning_rate" in logs and self.optimizer is not None:
            multipliers = [group.get("multiplier", 1.0) for group in self.optimizer.param_groups]
            logs = {**logs, "lr_multiplier_min": min(multipliers), "lr_multiplier_mean": sum(multipliers) / len(multipliers),
                    "lr_multiplier_max": max(multipliers)}
        super().log(logs, *args, **kwargs)


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
    """adept's defaults (`DEFAULT_TRAINING_ARGS`), overridden by ``cfg.training_args`` (checked by `TrainConfig`)."""
    from transformers import TrainingArguments

    merged = {**DEFAULT_TRAINING_ARGS, **cfg.training_args, "output_dir": cfg.output_dir}
    if cfg.eval_data:
        merged.setdefault("eval_strategy", "steps")
        merged.setdefault("eval_steps", merged.get("save_steps", 100))
    return TrainingArguments(**merged)


def trainable_layers(cfg: TrainConfig, model) -> tuple[list[int] | None, dict[str, Any] | None]:
    """Layers to train for the method, and the manifest when the model is expanded."""
    from adept.expansion import MANIFEST_NAME, load_manifest

    manifest_path = Path(cfg.model) / MANIFEST_NAME
    if cfg.method in EXPANDED_METHODS:
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: method '{cfg.method}' needs an expanded checkpoint (run adept expand)")
        manifest = load_manifest(manifest_path)
        if manifest["num_hidden_layers"] != model.config.num_hidden_layers:
            raise ValueError(f"{manifest_path}: manifest has {manifest['num_hidden_layers']} layers, the model {model.config.num_hidden_layers}")
        return [layer["layer_idx"] for layer in manifest["inserted_layers"]], manifest
    if cfg.method in LAYER_SUBSET_METHODS:
        from adept.expansion import select_least_important
        from adept.importance import ImportanceResult
        from adept.stages import load_importance

        result = ImportanceResult.from_dict(load_importance(cfg.importance))
        if result.num_layers != model.config.num_hidden_layers:
            raise ValueError(f"{cfg.importance}: scores for {result.num_layers} layers, model has {model.config.num_hidden_layers}")
        return select_least_important(result.layer_scores(cfg.layer_metric), cfg.num_layers), None
    return None, None


def build_datasets(cfg: TrainConfig, tokenizer):
    """Packed training stream (with optional general-domain replay) and held-out sets."""
    import datasets

    from adept.data import build_packed_dataset

    cache = cfg.cache_dir or str(Path(cfg.output_dir) / ".cache")
    workers = cfg.tokenize_workers
    train = build_packed_dataset(cfg.data, tokenizer, cfg.block_size, cache_dir=cache, num_proc=workers)
    if cfg.replay_ratio > 0:
        replay = build_packed_dataset(cfg.replay_data, tokenizer, cfg.block_size, cache_dir=cache, num_proc=workers)
        seed = int(cfg.training_args.get("seed", DEFAULT_TRAINING_ARGS["seed"]))
        train = datasets.interleave_datasets(
            [train, replay], probabilities=[1 - cfg.replay_ratio, cfg.replay_ratio], seed=seed, stopping_strategy="first_exhausted"
        )
    stems = [Path(p).stem for p in cfg.eval_data]
    evals = {}
    for path, stem in zip(cfg.eval_data, stems):
        blocks = build_packed_dataset(path, tokenizer, cfg.block_size, cache_dir=cache, num_proc=workers)
        if cfg.eval_max_blocks is not None:
            blocks = blocks.select(range(min(cfg.eval_max_blocks, len(blocks))))
        # general/heldout.jsonl and domain/heldout.jsonl log as eval_general_heldout_loss, ...
        evals[f"{Path(path).parent.name}_{stem}" if stems.count(stem) > 1 else stem] = blocks
    return train, evals


def _manifest_importance(manifest: Mapping[str, Any]) -> str | None:
    """The importance.json the expansion chose its layers from, if it is still there with unit scores."""
    from adept.stages import load_importance

    path = (manifest.get("selection") or {}).get("importance")
    if not path:
        return None
    try:
        payload = load_importance(path)
    except (OSError, ValueError):
        return None
    return path if payload.get("unit_grad_weight") else None


def _last_checkpoint(output_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None


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
    from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator, set_seed

    from adept.artifacts import artifact_header, atomic_directory, write_json
    from adept.data import load_probe_batches
    from adept.expansion import MANIFEST_NAME, read_model_config

    memory = PeakMemory()
    output_dir = Path(cfg.output_dir)
    args = make_training_arguments(cfg)
    read_model_config(cfg.model)
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model, local_files_only=True)
    # fp32 master weights; --bf16/--fp16 train in mixed precision through the Trainer.
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32, local_files_only=True)
    layers, manifest = trainable_layers(cfg, model)

    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"))
    elif layers is not None:
        freeze_all_but(model, layer_parameter_names(model, layers))
    trainable, total = count_parameters(model)
    logger.info("method %s: %d of %d parameters trainable (%.2f%%)", cfg.method, trainable, total, 100 * trainable / total)

    # One process per node tokenises and writes the packed cache; the others then load it
    # (ranks racing to publish the same cache directory would crash).
    with args.main_process_first(desc="building datasets"):
        train_data, eval_data = build_datasets(cfg, tokenizer)
    resume_from = _last_checkpoint(output_dir) if cfg.resume else None
    timer = StepTimer()
    all_callbacks: list[TrainerCallback] = [timer, NonFiniteLossGuard()]
    if cfg.method != "lora":
        all_callbacks.append(FrozenPrefixCallback())
    rate_callback = None
    if cfg.method in DYNAMIC_METHODS:
        probe = load_probe_batches(cfg.probe_data, tokenizer, cfg.probe, seed=args.seed)
        initial, source, started = None, "initial scores", time.perf_counter()
        if manifest is not None and resume_from is None:
            importance = cfg.importance or _manifest_importance(manifest)
            if importance is None:
                model.to(args.device)
            initial, source = initial_copy_scores(model, manifest, cfg.rule, probe, importance, progress=progress)
        rate_callback = adept_callback(probe, cfg.rule, cfg.reestimate_every, log_path=output_dir / RATES_LOG,
                                       initial_scores=initial, initial_source=source,
                                       reestimate_fraction=cfg.reestimate_fraction)
        rate_callback.seconds_spent = time.perf_counter() - started  # the source layers' probe, if any
        all_callbacks.append(rate_callback)
    all_callbacks.extend(callbacks)
    trainer_cls = adept_trainer if cfg.method in DYNAMIC_METHODS else _GuardedTrainer
    trainer = trainer_cls(
        model=model, args=args, train_dataset=train_data, eval_dataset=eval_data or None,
        data_collator=default_data_collator, callbacks=all_callbacks,
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
    tokens_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * cfg.block_size
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
            "config": _config_dict(cfg),
            "log_history": trainer.state.log_history,
        }
        write_json(output_dir / SUMMARY_NAME, summary)
    return output_dir / FINAL_MODEL_DIR


class _GuardedTrainer(_AdeptTrainerBase):
    """The plain Trainer plus the NaN/inf guard and timings, for uniform-rate methods."""


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))
