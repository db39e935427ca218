"""Stage 1b: function-preserving selective layer expansion (paper Sec. 3.2), and its runner.

Chooses the layers to duplicate -- the least important for general competence (from
``importance.json``), as many as fit a parameter budget, LLaMA-Pro's uniform spread, or given
explicitly -- and expands a checkpoint with them: `run_expansion` reads a safetensors checkpoint
and writes an ordinary Hugging Face checkpoint with its model card and the manifest
``expansion.json`` that later stages read. The plan and the state-dict surgery are
`adept.expansion_plan`; streaming the checkpoint to disk is `adept.expanded_checkpoint`. Their
public names are importable from here too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adept.architectures import get_architecture
from adept.checkpoints import checkpoint_shards, read_model_config, read_safetensors_header
from adept.config import ExpansionSection
from adept.defaults import DEFAULT_LAYER_METRIC
from adept.expanded_checkpoint import MANIFEST_NAME, build_manifest, expand_checkpoint, load_manifest, model_card
from adept.expansion_plan import (
    ExpansionPlan,
    InsertedLayer,
    TensorCopy,
    expand_config,
    expand_model,
    expand_state_dict,
    plan_expansion,
    plan_tensor_copies,
)
from adept.importance import read_importance

__all__ = [
    "MANIFEST_NAME",
    "ExpansionPlan",
    "InsertedLayer",
    "TensorCopy",
    "build_manifest",
    "count_new_layers",
    "expand_checkpoint",
    "expand_config",
    "expand_model",
    "expand_state_dict",
    "layer_param_counts",
    "load_manifest",
    "model_card",
    "plan_expansion",
    "plan_tensor_copies",
    "read_model_config",
    "run_expansion",
    "select_least_important",
    "select_uniform",
    "select_within_budget",
]


def select_least_important(layer_scores: Sequence[float], num_new_layers: int) -> list[int]:
    """The ``num_new_layers`` layers with the lowest general-competence importance.

    Ties are broken by layer index so the choice is deterministic.
    """
    if not 0 < num_new_layers < len(layer_scores):
        raise ValueError(
            f"--num-new-layers must be between 1 and {len(layer_scores) - 1} for a {len(layer_scores)}-layer model, "
            f"got {num_new_layers}"
        )
    order = sorted(range(len(layer_scores)), key=lambda idx: (layer_scores[idx], idx))
    return sorted(order[:num_new_layers])


def select_uniform(num_layers: int, num_new_layers: int) -> list[int]:
    """LLaMA-Pro's uniform expansion: one copy after the last layer of each of ``num_new_layers`` equal groups.

    For 8 layers and 2 copies this is layers 3 and 7; importance plays no part.
    """
    if not 0 < num_new_layers <= num_layers:
        raise ValueError(
            f"--uniform must be between 1 and {num_layers} for a {num_layers}-layer model, got {num_new_layers}"
        )
    return [(group + 1) * num_layers // num_new_layers - 1 for group in range(num_new_layers)]


def select_within_budget(
    layer_scores: Sequence[float], layer_num_params: Sequence[int], total_params: int, trainable_fraction: float
) -> list[int]:
    """Least important layers whose copies fit in ``trainable_fraction`` of the expanded model.

    The fraction is of the expanded model's parameters (original plus copies), the number a
    user sees as "trainable share" after expansion.
    """
    if not 0.0 < trainable_fraction < 1.0:
        raise ValueError(f"--trainable-fraction must be in (0, 1), got {trainable_fraction}")
    order = sorted(range(len(layer_scores)), key=lambda idx: (layer_scores[idx], idx))
    chosen: list[int] = []
    trainable = 0
    for idx in order[: len(layer_scores) - 1]:
        candidate = trainable + layer_num_params[idx]
        if candidate / (total_params + candidate) > trainable_fraction:
            break
        chosen.append(idx)
        trainable = candidate
    if not chosen:
        smallest = min(layer_num_params)
        raise ValueError(
            f"--trainable-fraction {trainable_fraction} is too small for one layer copy "
            f"(needs at least {smallest / (total_params + smallest):.4f})"
        )
    return sorted(chosen)


# --- the stage runner: checkpoint (and importance.json) in, expanded checkpoint out ---


def layer_param_counts(model_path: str | os.PathLike) -> tuple[list[int], int]:
    """Parameters per decoder layer and in total, read from safetensors headers only."""
    model_path = Path(model_path)
    config = read_model_config(model_path)
    spec = get_architecture(config.model_type)
    per_layer = [0] * config.num_hidden_layers
    total = 0
    for shard in checkpoint_shards(model_path):
        header, _ = read_safetensors_header(model_path / shard)
        for key, info in header.items():
            if key == "__metadata__":
                continue
            numel = 1
            for dim in info["shape"]:
                numel *= dim
            total += numel
            parts = spec.split_layer_key(key)
            if parts is not None:
                per_layer[parts[0]] += numel
    return per_layer, total


def count_new_layers(model_path: str | os.PathLike, expansion: ExpansionSection) -> int:
    """How many layers every expansion-style method adds (the same budget for all).

    The count of ``expansion.layers`` or ``expansion.num_new_layers`` when given; with
    ``trainable_fraction``, as many mean-sized layers as fit in that share of the expanded model;
    else a quarter of the depth.
    """
    num_layers = read_model_config(model_path).num_hidden_layers
    if expansion.layers is not None:
        return len(expansion.layers)
    if expansion.num_new_layers is not None:
        return expansion.num_new_layers
    if expansion.trainable_fraction is not None:
        per_layer, total = layer_param_counts(model_path)
        mean_layer = sum(per_layer) / len(per_layer)
        count = 0
        while (
            count + 1 < num_layers
            and (count + 1) * mean_layer / (total + (count + 1) * mean_layer) <= expansion.trainable_fraction
        ):
            count += 1
        if count == 0:
            raise ValueError(
                f"expansion.trainable_fraction {expansion.trainable_fraction} is too small for one layer copy"
            )
        return count
    return max(1, num_layers // 4)


def run_expansion(
    model_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    layers: list[int] | None = None,
    importance_path: str | os.PathLike | None = None,
    num_new_layers: int | None = None,
    trainable_fraction: float | None = None,
    uniform: int | None = None,
    metric: str = DEFAULT_LAYER_METRIC,
    overwrite: bool = False,
) -> Path:
    """Choose the layers to duplicate (explicitly, by importance, by budget, or uniformly) and expand."""
    given = [layers is not None, num_new_layers is not None, trainable_fraction is not None, uniform is not None]
    if sum(given) != 1:
        raise ValueError("give exactly one of --layers, --num-new-layers, --trainable-fraction or --uniform")
    config = read_model_config(model_path)
    selection: dict[str, Any]
    if layers is not None:
        chosen = list(layers)
        selection = {"method": "layers", "layers": chosen}
    elif uniform is not None:
        chosen = select_uniform(config.num_hidden_layers, uniform)
        selection = {"method": "uniform", "num_new_layers": uniform}
    else:
        if importance_path is None:
            raise ValueError("--num-new-layers and --trainable-fraction need --importance importance.json")
        result = read_importance(importance_path, config.num_hidden_layers, str(model_path))
        scores = result.layer_scores(metric)
        if num_new_layers is not None:
            chosen = select_least_important(scores, num_new_layers)
        else:
            per_layer, total = layer_param_counts(model_path)
            chosen = select_within_budget(scores, per_layer, total, trainable_fraction)
        selection = {
            "method": "importance" if num_new_layers is not None else "trainable_fraction",
            "importance": str(importance_path),
            "metric": metric,
            "num_new_layers": num_new_layers,
            "trainable_fraction": trainable_fraction,
            "layer_scores": scores,
        }
    plan = plan_expansion(config.num_hidden_layers, chosen)
    return expand_checkpoint(model_path, output_dir, plan, overwrite=overwrite, selection=selection)
