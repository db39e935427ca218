"""Stage 2 core: decoupled per-unit learning rates from general-domain importance (paper Sec. 3.3).

Turns unit importance into learning-rate multipliers (important units learn slowly, unimportant
ones fast; optionally rescaled to a parameter-weighted mean of 1, or shuffled as an ablation),
builds one optimizer group per unit, re-assigns rates mid-training while keeping the optimizer
and the LR scheduler consistent, and summarises the multipliers' distribution. No file I/O: the
training stage and the `AdeptCallback` call these functions.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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


def multipliers_from_importance(
    scores: Mapping[str, float],
    rule: MultiplierRule,
    sizes: Mapping[str, int] | None = None,
    seed: int = 0,
    step: int = 0,
) -> dict[str, float]:
    """Map unit importance to learning-rate multipliers; all equal scores -> all ones.

    The paper's rule, clamped to ``[rule.floor, rule.ceiling]``; then, with ``rule.shuffle``,
    permuted across units (`shuffle_multipliers` with ``seed`` and ``step``); then, with
    ``rule.rate_budget == "parameters"``, rescaled so the mean weighted by ``sizes`` is 1
    (`rescale_to_parameter_budget`).

    Args:
        scores: importance of each unit.
        rule: how importance becomes a multiplier.
        sizes: elements of each unit (needed by ``rate_budget="parameters"``).
        seed: the training seed (used by ``shuffle``).
        step: the optimizer step of this assignment (used by ``shuffle``).
    """
    if not scores:
        return {}
    values = list(scores.values())
    if any(math.isnan(v) for v in values):
        raise ValueError("importance scores contain NaN")
    if rule.rate_budget == "parameters" and sizes is None:
        raise ValueError("tuning.rate_budget=parameters needs the size of every unit")
    if max(values) == min(values):
        return {name: 1.0 for name in scores}  # a mean of 1 already, for any budget
    normalized = normalize_importance(scores, rule.normalization)
    multipliers = {}
    for name, value in normalized.items():
        m = rule.scale * (1.0 - value) if rule.rule == "linear" else rule.scale / (1.0 + value)
        multipliers[name] = min(max(m, rule.floor), rule.ceiling)
    if rule.shuffle:
        multipliers = shuffle_multipliers(multipliers, seed, step)
    if rule.rate_budget == "parameters":
        multipliers = rescale_to_parameter_budget(multipliers, sizes, rule.floor, rule.ceiling)
    return multipliers


def rescale_to_parameter_budget(
    multipliers: Mapping[str, float], sizes: Mapping[str, int], floor: float, ceiling: float
) -> dict[str, float]:
    """Multipliers ``clamp(c * m, floor, ceiling)`` whose mean weighted by ``sizes`` is exactly 1.

    One factor ``c`` for every unit, so the order of the units is kept (clamping can only tie
    neighbours). The weighted mean of the clamped values is piecewise linear and non-decreasing in
    ``c``; ``c`` is found exactly on the piece that reaches 1, not by iterating clamp and rescale.

    Raises:
        ValueError: a unit without a size, ``floor <= 1 <= ceiling`` not holding, or no factor
            reaching a mean of 1 (units at 0 stay there while the others stop at the ceiling).
    """
    names = list(multipliers)
    missing = [name for name in names if name not in sizes]
    if missing:
        raise ValueError(f"no size for units {missing[:5]}")
    if not floor <= 1.0 <= ceiling:
        raise ValueError(f"a mean multiplier of 1 is out of [floor, ceiling] = [{floor}, {ceiling}]")
    m = [float(multipliers[name]) for name in names]
    w = [float(sizes[name]) for name in names]
    if any(v < 0 for v in m) or any(v <= 0 for v in w):
        raise ValueError("multipliers must be >= 0 and unit sizes > 0")
    total = sum(w)

    def clamp(x: float) -> float:
        return min(max(x, floor), ceiling)

    def weighted(c: float) -> float:
        return sum(wi * clamp(c * mi) for wi, mi in zip(w, m))

    # Where a unit leaves the floor (c = floor / m) and reaches the ceiling (c = ceiling / m).
    breaks = sorted({0.0, *(floor / mi for mi in m if mi > 0), *(ceiling / mi for mi in m if mi > 0)})
    if weighted(breaks[-1]) < total * (1 - 1e-12):  # units at 0 stay there, the others stop at the ceiling
        raise ValueError(
            f"no rescaling reaches a mean multiplier of 1: the largest reachable within [floor, ceiling] = "
            f"[{floor}, {ceiling}] is {weighted(breaks[-1]) / total:.4g}"
        )
    # The last piece [breaks[k], breaks[k + 1]] that starts at or below the target.
    lo, hi = 0, len(breaks) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if weighted(breaks[mid]) <= total:
            lo = mid
        else:
            hi = mid - 1
    start = breaks[lo]
    end = breaks[lo + 1] if lo + 1 < len(breaks) else start + 1.0
    probe = (start + end) / 2
    fixed, slope = 0.0, 0.0
    for wi, mi in zip(w, m):
        x = probe * mi
        if x <= floor:
            fixed += wi * floor
        elif x >= ceiling:
            fixed += wi * ceiling
        else:
            slope += wi * mi
    c = (total - fixed) / slope if slope > 0 else start
    return {name: clamp(c * mi) for name, mi in zip(names, m)}


def shuffle_multipliers(multipliers: Mapping[str, float], seed: int, step: int) -> dict[str, float]:
    """The same multipliers handed to the units in a random order (the shuffled-rate ablation).

    The permutation depends only on ``seed``, ``step`` and the unit names (sorted), so every rank
    of a distributed run and every rerun of a seed draws the same one.
    """
    names = sorted(multipliers)
    order = list(range(len(names)))
    random.Random(f"adept-shuffle:{int(seed)}:{int(step)}").shuffle(order)
    shuffled = {name: float(multipliers[names[i]]) for name, i in zip(names, order)}
    return {name: shuffled[name] for name in multipliers}


def multiplier_distribution(
    multipliers: Mapping[str, float], sizes: Mapping[str, int], unit_types: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """How the multipliers are spread: over all units and per unit type.

    Each summary has ``units``, ``parameters``, ``unit_mean`` (every unit counts once),
    ``parameter_mean`` (weighted by elements: the run's effective rate relative to the base
    rate), ``min``, ``median`` and ``max``. ``unit_types`` maps each unit to its type (e.g.
    ``self_attn.q_proj.weight`` for every layer's query projection); without it every unit is
    its own type.
    """
    missing = [name for name in multipliers if name not in sizes]
    if missing:
        raise ValueError(f"no size for units {missing[:5]}")

    def summary(names: list[str]) -> dict[str, Any]:
        values = [float(multipliers[name]) for name in names]
        parameters = sum(int(sizes[name]) for name in names)
        return {
            "units": len(names),
            "parameters": parameters,
            "unit_mean": statistics.fmean(values),
            "parameter_mean": sum(float(multipliers[n]) * int(sizes[n]) for n in names) / parameters
            if parameters
            else None,
            "min": min(values),
            "median": statistics.median(values),
            "max": max(values),
        }

    if not multipliers:
        return {"units": 0, "parameters": 0, "by_type": {}}
    groups: dict[str, list[str]] = {}
    for name in multipliers:
        groups.setdefault((unit_types or {}).get(name, name), []).append(name)
    return {**summary(list(multipliers)), "by_type": {kind: summary(names) for kind, names in groups.items()}}


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
