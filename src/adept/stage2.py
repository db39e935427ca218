"""Stage 2 in the Hugging Face Trainer: the callback and Trainer that apply per-unit rates (paper Sec. 3.3).

`AdeptCallback` scores every trainable unit on the general-domain probe with Stage 1's code
(`adept.probe_scores.unit_gradient_scores`) at step 0 and every ``reestimate_every`` steps, and
re-assigns rates through `adept.tuning`; it appends each assignment (with the multipliers'
distribution over unit types) to ``unit_rates.jsonl`` and keeps its state in every checkpoint.
`AdeptTrainer` (an `adept.trainer.GuardedTrainer`, the Trainer of every method) builds one
optimizer group per unit. Both work in an unmodified Trainer; `adept.training.run_training`
wires them into a run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from adept.architectures import UnsupportedArchitectureError, get_architecture
from adept.config import DEFAULT_REFRESHES, MultiplierRule
from adept.distributed import check_engine, full_numel, is_sharded, probe_share
from adept.importance import read_importance
from adept.probe_scores import unit_gradient_scores
from adept.trainer import GuardedTrainer, checkpoint_dir
from adept.tuning import (
    build_param_groups,
    current_learning_rates,
    multiplier_distribution,
    multipliers_from_importance,
    schedule_factors,
    set_unit_multipliers,
    unit_scores_from_tensors,
)

logger = logging.getLogger(__name__)

STATE_NAME = "adept_tuning_state.json"


class AdeptCallback(TrainerCallback):
    """Assigns per-unit learning rates from general-domain importance and refreshes them.

    At step 0 (or when resuming, from the checkpoint's saved state) and then every
    ``reestimate_every`` optimizer steps, scores every trainable unit on the probe batches with
    Stage 1's code (`adept.probe_scores.unit_gradient_scores`), converts scores to multipliers with
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
    start of training (see `check_engine`). The rule's options are computed identically on every
    rank too: ``rate_budget`` weighs units by their full (unsharded) sizes, and ``shuffle`` draws
    its permutation from the training seed and the step alone.

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
        seed: seed of ``rule.shuffle``'s permutations (None: the Trainer's ``args.seed``, 0 when
            the callback is driven without a Trainer).
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
        seed: int | None = None,
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
        self.seed = seed
        self.step = 0  # the step of the assignment being made (the shuffle's seed)
        self.sizes: dict[str, int] = {}  # elements of every trainable unit, unsharded
        self.unit_types: dict[str, str] = {}  # e.g. model.layers.2.mlp.up_proj.weight -> mlp.up_proj.weight

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "multipliers": self.multipliers,
            "history": self.history,
            "reestimate_every": self.interval,
            "rule": asdict(self.rule),
            "seconds_spent": self.seconds_spent,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.multipliers = {k: float(v) for k, v in state["multipliers"].items()}
        self.history = list(state["history"])
        self.seconds_spent = float(state.get("seconds_spent", 0.0))

    def due(self, step: int, max_steps: int) -> bool:
        # Callers that drive the callback themselves (no on_train_begin) get the interval resolved here.
        every = (
            self.interval
            if self.interval is not None
            else resolve_reestimate_every(None, self.reestimate_fraction, max_steps)
        )
        return every > 0 and step % every == 0 and step < max_steps

    def distribution(self) -> dict[str, Any] | None:
        """The multipliers' spread at the first assignment and at the last refresh (None before any).

        ``{"first": ..., "last": ...}``, each `adept.tuning.multiplier_distribution` (overall and per
        unit type, unit mean and parameter-weighted mean, min, median, max) with its ``step`` and
        ``source``.
        """
        if not self.history or not self.sizes:
            return None
        return {
            key: {
                "step": entry["step"],
                "source": entry["source"],
                **multiplier_distribution(entry["multipliers"], self.sizes, self.unit_types),
            }
            for key, entry in (("first", self.history[0]), ("last", self.history[-1]))
        }

    def _measure_units(self, model) -> None:
        """Size and type of every trainable unit, for the budget rule and the distribution."""
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.sizes = {name: full_numel(p) for name, p in named}
        try:
            spec = get_architecture(getattr(model.config, "model_type", None))
        except UnsupportedArchitectureError:
            spec = None
        parts = {name: spec.split_layer_key(name) if spec is not None else None for name, _ in named}
        self.unit_types = {name: part[1] if part is not None else name for name, part in parts.items()}

    def _multipliers(self, scores: Mapping[str, float]) -> dict[str, float]:
        seed = self.seed if self.seed is not None else 0
        return multipliers_from_importance(scores, self.rule, self.sizes, seed=seed, step=self.step)

    # -- the estimate ----------------------------------------------------------------------------
    def estimate(self, model) -> tuple[dict[str, float], dict[str, float]]:
        """Importance of every trainable unit, combined over ranks (see `unit_gradient_scores`).

        At step 0 of a run given ``initial_scores``, those are returned instead of a probe.
        """
        if not self.sizes:
            self._measure_units(model)
        if self._pending_initial is not None:
            scores, self._pending_initial = self._pending_initial, None
            self.source = self.initial_source
            return scores, self._multipliers(scores)
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
        return scores, self._multipliers(scores)

    def reestimate(self, model, optimizer, scheduler, step: int, is_main: bool) -> None:
        start = time.perf_counter()
        self.step = step
        self._measure_units(model)
        scores, multipliers = self.estimate(model)
        set_unit_multipliers(optimizer, scheduler, multipliers)
        self.multipliers = multipliers
        spread = multiplier_distribution(multipliers, self.sizes, self.unit_types)
        entry = {
            "step": step,
            "source": self.source,
            "importance": scores,
            "multipliers": multipliers,
            "lr": current_learning_rates(optimizer),
            "distribution": spread,
        }
        self.history.append({"step": step, "source": self.source, "importance": scores, "multipliers": multipliers})
        self.seconds_spent += time.perf_counter() - start
        if is_main and self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as handle:
                handle.write(json.dumps(entry) + "\n")
        logger.info(
            "step %d: re-assigned %d unit rates from %s (multipliers %.3f-%.3f, parameter-weighted mean %.3f)",
            step,
            len(multipliers),
            self.source,
            spread["min"],
            spread["max"],
            spread["parameter_mean"],
        )

    # -- Trainer events ----------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        check_engine(model)
        self.interval = resolve_reestimate_every(self.reestimate_every, self.reestimate_fraction, state.max_steps)
        if self.seed is None:
            self.seed = args.seed
        self._measure_units(model)
        if state.global_step == 0:
            if self.log_path is not None and state.is_world_process_zero and self.log_path.exists():
                self.log_path.unlink()
            self._pending_initial = self.initial_scores
            self.reestimate(model, optimizer, lr_scheduler, 0, state.is_world_process_zero)
            return
        saved = checkpoint_dir(args, state) / STATE_NAME
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
            folder = checkpoint_dir(args, state)
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
            every,
            max_steps,
            DEFAULT_REFRESHES,
        )
    return every


def initial_copy_scores(
    model,
    manifest: Mapping[str, Any],
    rule: MultiplierRule,
    probe_batches: Sequence[dict] | None = None,
    importance: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[dict[str, float], str]:
    """Step-0 scores for the units of freshly inserted copies: their source layers' scores.

    A copy's tensors equal its source's except the ones set to make it an identity, and those
    get the score of the source tensor they were copied from. The scores come from Stage 1's
    ``importance.json`` when given (its per-element mean or sum, as ``rule.unit_score`` says),
    otherwise from scoring the source layers (frozen, unchanged by expansion) on the probe.

    Returns ``(scores by trainable parameter name, source description)``.
    """
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
        result = read_importance(importance, manifest["source_num_layers"], "the model the expansion was made from")
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
        raise ValueError(
            "under DeepSpeed ZeRO-3 the step-0 rates need Stage 1's scores: pass --importance "
            "importance.json (train.importance) for the source layers"
        )
    batches = probe_share(probe_batches, source_params)
    grad_weight, _, _, _ = unit_gradient_scores(model, batches, source_params, progress=progress, all_reduce=True)
    return unit_scores_from_tensors(names, grad_weight, source_params, rule.unit_score), "source layers on the probe"


def read_rate_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of a ``unit_rates.jsonl`` written by `AdeptCallback`, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` (by a run that died before its next checkpoint)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in lines))


class AdeptTrainer(GuardedTrainer):
    """A Trainer whose optimizer has one group per trainable unit, and that refuses NaN/inf loss.

    Logs the base learning rate (the schedule applied to ``learning_rate``; each unit trains at
    it times its multiplier) and the smallest, mean and largest multiplier, and their mean weighted
    by each unit's parameters (``lr_multiplier_parameter_mean``: the effective rate over the base).
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
            groups = self.optimizer.param_groups
            multipliers = [group.get("multiplier", 1.0) for group in groups]
            # Sizes from the model, by unit name: under ZeRO the optimizer's groups hold flat partitions.
            named = dict(self.model.named_parameters())
            sizes = [full_numel(named[group["unit"]]) if group.get("unit") in named else 0 for group in groups]
            logs = {
                **logs,
                "lr_multiplier_min": min(multipliers),
                "lr_multiplier_mean": sum(multipliers) / len(multipliers),
                "lr_multiplier_max": max(multipliers),
                "lr_multiplier_parameter_mean": sum(m * n for m, n in zip(multipliers, sizes)) / max(sum(sizes), 1),
            }
        super().log(logs, *args, **kwargs)
