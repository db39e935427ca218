"""A post-hoc forgetting dial: move a trained model's weights back towards where training started.

``w = w_start + alpha * (w_tuned - w_start)``: alpha 1 is the trained model, alpha 0 its start.
For an expanded run the start of each copy is its initial copy, rebuilt from the base model with
Stage 1b's `adept.expansion_plan.expand_state_dict` and checked against ``expansion.json``; for full
CPT and freeze it is the base model; LoRA runs are saved merged, so they interpolate the same way.
Reads two checkpoints, writes an ordinary checkpoint plus ``interpolation.json``. Not in the paper.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from adept.architectures import ArchitectureSpec, get_architecture
from adept.artifacts import artifact_header, atomic_directory, check_output_dir, read_json, write_json
from adept.checkpoints import checkpoint_dtype, load_model, load_tokenizer, read_model_config
from adept.expanded_checkpoint import MANIFEST_NAME, load_manifest
from adept.expansion_plan import ExpansionPlan, expand_state_dict, plan_expansion, plan_tensor_copies
from adept.results import SUMMARY_NAME
from adept.training import FINAL_MODEL_DIR

logger = logging.getLogger(__name__)

INTERPOLATION_NAME = "interpolation.json"


def interpolate_state_dict(
    start: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``start + alpha * (tuned - start)`` for every tensor, in the tuned tensors' dtypes.

    Computed with `torch.lerp` in float32 (float64 where a tensor is float64), whose kernel returns
    ``start`` exactly at alpha 0 and ``tuned`` exactly at alpha 1. Tensors that are not floating
    point (none in the supported models) must be equal and are copied.

    Raises:
        ValueError: the two state dicts differ in keys or in a tensor's shape (the error names it).
    """
    missing, extra = sorted(set(tuned) - set(start)), sorted(set(start) - set(tuned))
    if missing or extra:
        what = (
            f"'{missing[0]}' is only in the tuned model" if missing else f"'{extra[0]}' is only in the starting model"
        )
        raise ValueError(
            f"the starting and tuned models have different tensors: {what} "
            f"({len(missing)} only in the tuned, {len(extra)} only in the starting model)"
        )
    result = {}
    for name, after in tuned.items():
        before = start[name]
        if before.shape != after.shape:
            raise ValueError(
                f"tensor '{name}' has shape {tuple(before.shape)} in the starting model but "
                f"{tuple(after.shape)} in the tuned one"
            )
        if not after.is_floating_point():
            if not torch.equal(before, after):
                raise ValueError(
                    f"tensor '{name}' ({after.dtype}) differs between the models and cannot be interpolated"
                )
            result[name] = after.clone()
            continue
        work = torch.float64 if torch.float64 in (before.dtype, after.dtype) else torch.float32
        result[name] = torch.lerp(before.to(work), after.to(work), float(alpha)).to(after.dtype)
    return result


def plan_from_manifest(manifest: Mapping[str, Any]) -> ExpansionPlan:
    """The `ExpansionPlan` that made an expanded checkpoint, rebuilt from its ``expansion.json``."""
    plan = plan_expansion(int(manifest["source_num_layers"]), [int(i) for i in manifest["source_layers"]])
    inserted = [(layer["layer_idx"], layer["source_layer_idx"]) for layer in manifest["inserted_layers"]]
    layer_map = [manifest["layer_map"][str(old)] for old in range(plan.source_num_layers)]
    if inserted != [(layer.layer_idx, layer.source_layer_idx) for layer in plan.inserted] or layer_map != list(
        plan.layer_map
    ):
        raise ValueError("expansion.json: its inserted_layers and layer_map are not what its source_layers give")
    return plan


def starting_state_dict(
    base_state: Mapping[str, torch.Tensor], manifest: Mapping[str, Any], spec: ArchitectureSpec
) -> dict[str, torch.Tensor]:
    """The expanded model as it was before training, from the unexpanded base model's state dict.

    Each copy holds its source layer's tensors except the ones ``expansion.json`` lists in
    ``initialized_tensors``, which hold their listed values (zero output projections, or a
    post-norm's zero gain): exactly what `adept.expansion_plan.expand_state_dict` builds. Fails when the
    manifest lists other tensors or values than this version of the expansion sets.
    """
    plan = plan_from_manifest(manifest)
    fills = {
        item.target_key: item.fill for item in plan_tensor_copies(list(base_state), plan, spec) if item.fill is not None
    }
    listed = {key: float(value) for key, value in manifest["initialized_tensors"].items()}
    if fills != listed:
        differ = sorted(set(fills.items()) ^ set(listed.items()))
        raise ValueError(
            f"expansion.json's initialized_tensors do not match the copies this adept makes "
            f"(first difference: {differ[0][0]})"
        )
    return expand_state_dict(base_state, plan, spec)


# --- the runner: two checkpoints in, an interpolated checkpoint out ---------------------------


def tuned_model_dir(path: str | os.PathLike) -> Path:
    """A trained model's folder: ``path`` itself, or the ``model/`` of a training output directory."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / FINAL_MODEL_DIR / "config.json").is_file():
        return path / FINAL_MODEL_DIR
    raise FileNotFoundError(
        f"{path}: neither a checkpoint (config.json) nor a training output directory with {FINAL_MODEL_DIR}/config.json"
    )


def run_interpolation(
    base: str | os.PathLike,
    tuned: str | os.PathLike,
    output_dir: str | os.PathLike,
    alpha: float,
    *,
    overwrite: bool = False,
) -> Path:
    """Write the checkpoint ``start + alpha * (tuned - start)`` to ``output_dir`` (atomically).

    Args:
        base: where training started. For an expanded run (the tuned folder has
            ``expansion.json``) the unexpanded base model, or the expanded starting checkpoint
            itself (told apart by their layer counts); otherwise the base model (full CPT,
            freeze, and LoRA, whose runs are saved merged: the same weight interpolation).
        tuned: the trained model's folder, or a training output directory (its ``model/``).
        output_dir: the new checkpoint: weights in the tuned model's dtype, its tokenizer and
            ``expansion.json``, and ``interpolation.json``.
        alpha: share of the training update kept: 0 the start, 1 the trained model. Values
            outside [0, 1] extrapolate and are allowed with a warning.
        overwrite: replace a non-empty ``output_dir``.

    Both models are held in memory in float32 (plus the starting weights of an expanded run).
    """
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"--alpha must be a finite number, got {alpha}")
    if not 0.0 <= alpha <= 1.0:
        logger.warning("alpha %g is outside [0, 1]: the weights are extrapolated beyond the two models", alpha)
    base, tuned_dir, output_dir = Path(base), tuned_model_dir(tuned), Path(output_dir)
    check_output_dir(output_dir, overwrite)
    base_config, tuned_config = read_model_config(base), read_model_config(tuned_dir)
    if base_config.model_type != tuned_config.model_type:
        raise ValueError(f"--base is a {base_config.model_type} model but --tuned a {tuned_config.model_type} one")
    manifest = load_manifest(tuned_dir) if (tuned_dir / MANIFEST_NAME).is_file() else None
    base_layers = base_config.num_hidden_layers
    if manifest is None:
        start_kind = "base"
        if base_layers != tuned_config.num_hidden_layers:
            raise ValueError(
                f"--base has {base_layers} layers but --tuned {tuned_config.num_hidden_layers}, and "
                f"{tuned_dir} has no {MANIFEST_NAME} saying how it was expanded"
            )
    elif base_layers == manifest["source_num_layers"]:
        start_kind = "base expanded as in expansion.json"
    elif base_layers == manifest["num_hidden_layers"]:
        start_kind = "expanded starting checkpoint"
    else:
        raise ValueError(
            f"--base has {base_layers} layers; the tuned model was expanded from "
            f"{manifest['source_num_layers']} into {manifest['num_hidden_layers']} (expansion.json)"
        )

    base_state = load_model(base, torch.float32).state_dict()
    model = load_model(tuned_dir, torch.float32)
    if start_kind == "base expanded as in expansion.json":
        start = starting_state_dict(base_state, manifest, get_architecture(tuned_config.model_type))
    else:
        start = base_state
        if manifest is not None:
            _check_initial_copies(start, manifest)
    weights = interpolate_state_dict(start, model.state_dict(), alpha)
    model.load_state_dict(weights)
    model.to(getattr(torch, checkpoint_dtype(tuned_dir)))
    tokenizer = load_tokenizer(tuned_dir)
    summary_path = tuned_dir.parent / SUMMARY_NAME
    method = (
        read_json(summary_path).get("method") if tuned_dir.name == FINAL_MODEL_DIR and summary_path.is_file() else None
    )
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if manifest is not None:
            shutil.copy2(tuned_dir / MANIFEST_NAME, tmp / MANIFEST_NAME)
        write_json(
            tmp / INTERPOLATION_NAME,
            {
                **artifact_header("interpolation"),
                "alpha": alpha,
                "base": str(base),
                "tuned": str(tuned_dir),
                "method": method,
                "start": start_kind,
                "formula": "w = w_start + alpha * (w_tuned - w_start)",
            },
        )
    logger.info("interpolated %s towards %s (%s) with alpha %g -> %s", tuned_dir, base, start_kind, alpha, output_dir)
    return output_dir


def _check_initial_copies(state: Mapping[str, torch.Tensor], manifest: Mapping[str, Any]) -> None:
    """An expanded ``--base`` must still hold its copies' initial values, or it is not where training started."""
    for key, value in manifest["initialized_tensors"].items():
        if key not in state:
            raise ValueError(f"--base has no tensor '{key}', which expansion.json lists as initialised")
        if not bool((state[key] == float(value)).all()):
            raise ValueError(
                f"--base is not the expanded starting checkpoint: its '{key}' is not {value} as "
                f"expansion.json records (pass the unexpanded base or the checkpoint training started from)"
            )
