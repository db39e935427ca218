"""Stage 2 core: decoupled per-unit learning rates from general-domain importance (paper Sec. 3.3).

Turns unit importance into learning-rate multipliers (important units learn slowly, unimportant
ones fast), builds one optimizer group per unit, and re-assigns rates mid-training while keeping
the optimizer and the LR scheduler consistent. No file I/O: the training stage and the
`AdeptCallback` call these functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from adept.config import MultiplierRule
from adept.distributed import full_numel


def normalize_importance(scores: Mapping[str, float], normalization: str) -> dict[str, float]:
    """Normalise unit scores over all units together (see `MultiplierRule`)."""
    names = list(scores)
    values = [float(scores[n]) for n in names]
    if normalization == "none":
        return dict(zip(names, values))
    if normalization == "rank":
        if len(names) == 1:
            return {names[0]: 0.0}
        order = sorted(range(len(values)), key=lambda i: (values[i], names[i]))
        ranks = [0.0] * len(values)
        # equal scores share their average rank so ties never get different rates
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                ranks[order[k]] = (i + j) / 2 / (len(values) - 1)
            i = j + 1
        return dict(zip(names, ranks))
    lo, hi = min(values), max(values)
    span = hi - lo
    return {n: (v - lo) / span if span > 0 else 0.0 for n, v in zip(names, values)}


def multipliers_from_importance(scores: Mapping[str, float], rule: MultiplierRule) -> dict[str, float]:
    """Map unit importance to learning-rate multipliers; all equal scores -> all ones."""
    if not scores:
        return {}
    values = list(scores.values())
    if any(math.isnan(v) for v in values):
        raise ValueError("importance scores contain NaN")
    if max(values) == min(values):
        return {name: 1.0 for name in scores}
    normalized = normalize_importance(scores, rule.normalization)
    multipliers = {}
    for name, value in normalized.items():
        m = rule.scale * (1.0 - value) if rule.rule == "linear" else rule.scale / (1.0 + value)
        multipliers[name] = min(max(m, rule.floor), rule.ceiling)
    return multipliers


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and norm weights (1-D tensors) get no weight decay, as in HF Trainer."""
    return param.ndim < 2 or name.endswith(".bias")


def build_param_groups(
    model: nn.Module,
    trainable: Iterable[str],
    base_lr: float,
    weight_decay: float = 0.0,
    multipliers: Mapping[str, float] | None = None,
) -> list[dict]:
    """One optimizer group per trainable unit (parameter tensor), LR = ``base_lr * multiplier``.

    Each group stores ``unit``, ``base_lr`` and ``multiplier`` so a scheduler scales all groups
    by one factor and rates can be re-assigned later. Asserts that the groups partition the
    trainable parameters exactly once and that nothing else requires gradients.
    """
    named = dict(model.named_parameters())
    trainable = list(trainable)
    unknown = [name for name in trainable if name not in named]
    if unknown:
        raise ValueError(f"trainable units not found in the model: {unknown[:5]}")
    multipliers = dict(multipliers or {})
    extra = sorted(set(multipliers) - set(trainable))
    if extra:
        raise ValueError(f"multipliers given for units that are not trainable: {extra[:5]}")
    groups = []
    for name in trainable:
        param = named[name]
        m = float(multipliers.get(name, 1.0))
        groups.append(
            {
                "params": [param],
                "unit": name,
                "multiplier": m,
                "base_lr": base_lr,
                "lr": base_lr * m,
                "weight_decay": 0.0 if _no_decay(name, param) else weight_decay,
            }
        )
    grouped = [id(g["params"][0]) for g in groups]
    requires = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(grouped) == len(set(grouped)), "a parameter appears in two optimizer groups"
    assert set(grouped) == requires, "optimizer groups must partition exactly the parameters that require grad"
    return groups


def set_unit_multipliers(optimizer: torch.optim.Optimizer, scheduler, multipliers: Mapping[str, float]) -> None:
    """Re-assign per-unit multipliers mid-training, keeping optimizer and scheduler consistent.

    The scheduler's current factor (warmup, cosine...) keeps applying on top: each group's
    ``initial_lr`` and the scheduler's ``base_lrs`` become ``base_lr * m`` and the live ``lr``
    becomes ``base_lr * m * factor``, where the factor is read from the scheduler itself.
    """
    groups = optimizer.param_groups
    absent = [g.get("unit") for g in groups if g.get("unit") not in multipliers]
    if absent:
        raise ValueError(f"no multiplier for optimizer groups {absent[:5]}")
    factors = schedule_factors(optimizer, scheduler)
    for idx, group in enumerate(groups):
        m = float(multipliers[group["unit"]])
        group["multiplier"] = m
        group["initial_lr"] = group["base_lr"] * m
        group["lr"] = group["base_lr"] * m * factors[idx]
        if scheduler is not None:
            scheduler.base_lrs[idx] = group["base_lr"] * m
    if scheduler is not None and hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [group["lr"] for group in groups]


def schedule_factors(optimizer: torch.optim.Optimizer, scheduler) -> list[float]:
    """The factor the scheduler applies to each group's base LR right now."""
    groups = optimizer.param_groups
    if scheduler is None:
        return [1.0] * len(groups)
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is not None:  # LambdaLR: every HF schedule (linear, cosine, constant, warmup...)
        return [float(fn(scheduler.last_epoch)) for fn in lambdas]
    factors = []
    for group, base in zip(groups, scheduler.base_lrs):
        factors.append(group["lr"] / base if base else 1.0)
    return factors


def current_learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {g["unit"]: g["lr"] for g in optimizer.param_groups if "unit" in g}


def unit_scores_from_tensors(
    names: Sequence[str], grad_weight: torch.Tensor, params: Sequence[nn.Parameter], unit_score: str
) -> dict[str, float]:
    """Turn the per-tensor |w * g| sums of `importance.unit_gradient_scores` into unit scores."""
    values = grad_weight.tolist()
    if unit_score == "mean":
        values = [v / full_numel(p) for v, p in zip(values, params)]
    return dict(zip(names, values))
