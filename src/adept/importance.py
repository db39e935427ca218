"""Stage 1a: general-competence importance of layers and units (paper Sec. 3.1).

Scores, on a general-domain probe corpus, how much each decoder layer and each unit (one
parameter tensor of a layer) matters: loss increase when a layer is skipped ("masking out",
the paper's layer criterion), gradient x weight |w * dL/dw| per unit (the paper's unit
criterion), the empirical Fisher (per-example squared gradients), and layer scores aggregated
from units.
The same code runs offline (`adept importance`) and inside training (Stage 2 re-estimation).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adept.architectures import get_architecture, get_decoder_layers
from adept.artifacts import artifact_header, read_artifact, write_json
from adept.checkpoints import load_model_and_tokenizer
from adept.config import METRICS, ImportanceSection, ProbeConfig
from adept.defaults import DEFAULT_ATTN_IMPLEMENTATION, DEFAULT_DTYPE, DEFAULT_TEXT_FIELD, DEFAULT_TXT_SPLIT
from adept.forward import count_targets
from adept.plots import plot_layer_bars, plot_unit_heatmap
from adept.probe_batches import load_probe_batches
from adept.probe_scores import (  # noqa: F401  (batch_loss_sum: benchmarks import it from here)
    batch_loss_sum,
    layer_masking_scores,
    layer_units,
    unit_gradient_scores,
)

logger = logging.getLogger(__name__)

METRIC_HELP = {
    "masking": "loss increase when the layer is skipped",
    "grad_weight": "sum over the layer's units of |w * dL/dw|",
    "rank": "mean over unit types of the layer's rank by |w * dL/dw| (rank aggregation)",
    "fisher": "sum over the layer's units of the empirical Fisher (per-sequence squared gradients)",
}


@dataclass
class ImportanceResult:
    """Importance of every layer and unit of a model on one probe corpus.

    Unit matrices are indexed ``[layer_idx][unit_idx]`` with ``unit_names`` giving the unit key
    inside a layer (e.g. ``self_attn.q_proj.weight``). Layer lists are indexed by ``layer_idx``.
    Gradient scores are token-weighted averages over batches of the per-batch mean loss, so
    they do not depend on padding or on how the corpus is cut into batches of equal content.
    """

    num_layers: int
    layers: list[int]
    unit_names: list[str]
    num_tokens: int
    base_loss: float
    unit_grad_weight: list[list[float]] = field(default_factory=list)
    unit_grad_weight_mean: list[list[float]] = field(default_factory=list)
    unit_fisher: list[list[float]] = field(default_factory=list)
    layer_masking: list[float] | None = None

    def layer_scores(self, metric: str) -> list[float]:
        """Per-layer score for ``metric`` (higher = more important for general competence)."""
        if metric == "masking":
            if self.layer_masking is None:
                raise ValueError("masking scores were not computed (add 'masking' to the metrics)")
            return list(self.layer_masking)
        if metric not in METRICS:
            raise ValueError(f"unknown metric '{metric}'; choose from {', '.join(METRICS)}")
        if not self.unit_grad_weight:
            raise ValueError(f"metric '{metric}' needs gradient scores, which were not computed")
        if metric == "grad_weight":
            return [_nansum(row) for row in self.unit_grad_weight]
        if metric == "fisher":
            if not self.unit_fisher:
                raise ValueError("fisher scores were not computed (add 'fisher' to the metrics)")
            return [_nansum(row) for row in self.unit_fisher]
        return rank_aggregate(self.unit_grad_weight)

    def ranking(self, metric: str) -> list[int]:
        """Layer indices from most to least important (ties broken by index)."""
        scores = self.layer_scores(metric)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [self.layers[i] for i in order]

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        available = [m for m in METRICS if m != "masking" or self.layer_masking is not None]
        if not self.unit_grad_weight:
            available = [m for m in available if m == "masking"]
        if not self.unit_fisher:
            available = [m for m in available if m != "fisher"]
        payload["layer_scores"] = {m: self.layer_scores(m) for m in available}
        payload["layer_ranking"] = {m: self.ranking(m) for m in available}
        payload["metric_descriptions"] = {m: METRIC_HELP[m] for m in available}
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ImportanceResult:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in payload.items() if k in names})


def _nansum(values: Sequence[float]) -> float:
    return float(sum(v for v in values if not math.isnan(v)))


def rank_aggregate(unit_scores: Sequence[Sequence[float]]) -> list[float]:
    """Mean over unit types of each layer's normalised rank (0 = least, 1 = most important)."""
    num_layers = len(unit_scores)
    if num_layers == 1:
        return [1.0]
    num_units = len(unit_scores[0])
    totals = [0.0] * num_layers
    counts = [0] * num_layers
    for unit in range(num_units):
        present = [
            (unit_scores[layer][unit], layer) for layer in range(num_layers) if not math.isnan(unit_scores[layer][unit])
        ]
        present.sort()
        for rank, (_, layer) in enumerate(present):
            totals[layer] += rank / max(len(present) - 1, 1)
            counts[layer] += 1
    return [totals[i] / counts[i] if counts[i] else 0.0 for i in range(num_layers)]


def compute_importance(
    model: nn.Module,
    batches: Sequence[dict],
    metrics: Sequence[str] = METRICS,
    layers: Sequence[int] | None = None,
    progress: bool = True,
) -> ImportanceResult:
    """Score layers and units of ``model`` on probe ``batches``.

    Args:
        model: a causal LM of a supported architecture.
        batches: padded batches from `adept.data.make_batches`.
        metrics: any of ``masking``, ``grad_weight``, ``rank``, ``fisher``; the last three
            share one gradient pass.
        layers: decoder layers to score (default: all).
        progress: show progress bars.
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown importance metrics {unknown}; choose from {', '.join(METRICS)}")
    get_architecture(model.config.model_type)
    num_layers = len(get_decoder_layers(model))
    layers = list(range(num_layers)) if layers is None else list(layers)
    names, grid = layer_units(model, layers)
    result = ImportanceResult(
        num_layers=num_layers, layers=layers, unit_names=names, num_tokens=0, base_loss=float("nan")
    )
    if set(metrics) & {"grad_weight", "rank", "fisher"}:
        flat = [p for row in grid for p in row if p is not None]
        with_fisher = "fisher" in metrics
        grad_weight, fisher, loss, tokens = unit_gradient_scores(
            model, batches, flat, progress=progress, fisher=with_fisher
        )
        gw_list = grad_weight.tolist()
        fi_list = fisher.tolist() if with_fisher else [math.nan] * len(gw_list)
        result.base_loss, result.num_tokens = loss, tokens
        position = 0
        for row in grid:
            gw_row, gw_mean_row, fi_row = [], [], []
            for p in row:
                if p is None:
                    gw_row.append(math.nan), gw_mean_row.append(math.nan), fi_row.append(math.nan)
                    continue
                gw_row.append(gw_list[position])
                gw_mean_row.append(gw_list[position] / p.numel())
                fi_row.append(fi_list[position])
                position += 1
            result.unit_grad_weight.append(gw_row)
            result.unit_grad_weight_mean.append(gw_mean_row)
            if with_fisher:
                result.unit_fisher.append(fi_row)
    if "masking" in metrics:
        was_training = model.training
        model.eval()
        try:
            base, scores = layer_masking_scores(model, batches, layers, progress=progress)
        finally:
            model.train(was_training)
        result.layer_masking = scores
        result.base_loss = base
        result.num_tokens = sum(count_targets(b["labels"]) for b in batches)
    return result


# --- the stage runner: probe file in, importance.json out ---

IMPORTANCE_NAME = "importance.json"


def run_importance(
    model_path: str | os.PathLike,
    probe_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    settings: ImportanceSection | None = None,
    *,
    txt_split: str = DEFAULT_TXT_SPLIT,
    device: str = "cpu",
    dtype: str = DEFAULT_DTYPE,
    attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION,
    text_field: str = DEFAULT_TEXT_FIELD,
    progress: bool = True,
) -> Path:
    """Compute importance and write ``importance.json`` plus its two PNGs into ``output_dir``.

    ``settings``: the probe, metrics and seed (`ImportanceSection`'s defaults when None);
    ``txt_split``: how ``.txt`` probe files split into documents (see `adept.data.load_documents`);
    ``text_field``: the text column of tabular probe files. The model is loaded in ``dtype`` with
    ``attn_implementation``, the run's precision and kernel.
    """
    settings = settings or ImportanceSection()
    output_dir = Path(output_dir)
    model, tokenizer = load_model_and_tokenizer(
        model_path, device=device, dtype=dtype, attn_implementation=attn_implementation
    )
    torch.manual_seed(settings.seed)
    batches = load_probe_batches(
        probe_path, tokenizer, settings, seed=settings.seed, txt_split=txt_split, text_field=text_field
    )
    metrics = list(settings.metrics)
    result = compute_importance(model, batches, metrics=metrics, progress=progress)
    probe = {f.name: getattr(settings, f.name) for f in fields(ProbeConfig)}
    payload = {
        **artifact_header("importance"),
        "model": str(model_path),
        "model_type": model.config.model_type,
        "probe": {"path": str(probe_path), **probe, "seed": settings.seed, "txt_split": txt_split},
        "metrics": metrics,
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        **result.to_dict(),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    path = write_json(output_dir / IMPORTANCE_NAME, payload)
    if result.unit_grad_weight:
        plot_unit_heatmap(result.unit_grad_weight, result.layers, result.unit_names, output_dir / "unit_importance.png")
    plot_layer_bars(payload["layer_scores"], result.layers, output_dir / "layer_importance.png")
    logger.info("importance written to %s", path)
    return path


def load_importance(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``importance.json`` (a file or the directory holding it)."""
    return read_artifact(path, IMPORTANCE_NAME, "importance")


def read_importance(path: str | os.PathLike, num_layers: int, model: str) -> ImportanceResult:
    """``importance.json`` as an `ImportanceResult`, checked to score every layer of a ``num_layers``-layer model.

    ``model`` names that model in the error (a path, or what it was made from).
    """
    result = ImportanceResult.from_dict(load_importance(path))
    if result.num_layers != num_layers or result.layers != list(range(result.num_layers)):
        raise ValueError(
            f"{path}: scores cover layers {result.layers} of a {result.num_layers}-layer model, "
            f"but {model} has {num_layers} layers"
        )
    return result
