"""Stage 1a: general-competence importance of layers and units (paper Sec. 3.1).

Scores, on a general-domain probe corpus, how much each decoder layer and each unit (one
parameter tensor of a layer) matters: loss increase when a layer is skipped ("masking out",
the paper's layer criterion), gradient x weight |w * dL/dw| per unit (the paper's unit
criterion), the empirical Fisher (per-example squared gradients), and layer scores aggregated
from units.
The same code runs offline (`adept importance`) and inside training (Stage 2 re-estimation).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adept.architectures import get_architecture, get_decoder_layers
from adept.artifacts import artifact_header, read_artifact, write_json
from adept.config import METRICS, ImportanceSection, ProbeConfig
from adept.distributed import dist_ready, is_sharded, probe_gradients, shard_of, sum_over_shards
from adept.forward import count_targets, forward_batches, model_device, next_token_loss_sum

logger = logging.getLogger(__name__)

PROBE_INPUTS = ("input_ids", "attention_mask")  # probe batches are padded

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


# --- loss on the probe corpus --------------------------------------------------------------


def mixed_precision(model: nn.Module) -> contextlib.AbstractContextManager:
    """Autocast to the model's low precision when its weights mix dtypes, else nothing.

    A bf16 run keeps its frozen base in bf16 and its trainable weights in fp32 (`run_training`);
    the Trainer's steps run under autocast, and the probe inside training must too, or a
    bf16 activation would meet an fp32 weight.
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) < 2:
        return contextlib.nullcontext()
    low = min(dtypes, key=lambda dtype: torch.finfo(dtype).bits)
    return torch.autocast(device_type=model_device(model).type, dtype=low)


def batch_loss_sum(model: nn.Module, batch: dict) -> torch.Tensor:
    """Summed next-token cross entropy over non-masked targets (padding never counts).

    One pass of the shared forward loop; it keeps the autograd graph whenever gradients are on
    (the gradient probes backpropagate through it).
    """
    with mixed_precision(model):
        ((moved, logits),) = forward_batches(
            model, [batch], inputs=PROBE_INPUTS, grad=torch.is_grad_enabled(), progress=False, use_cache=False
        )
        return next_token_loss_sum(logits, moved["labels"])


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Sequence[dict]) -> float:
    """Token-averaged loss over all batches."""
    total = torch.zeros((), dtype=torch.float64, device=model_device(model))
    tokens = 0
    with mixed_precision(model):
        for batch, logits in forward_batches(model, batches, inputs=PROBE_INPUTS, progress=False, use_cache=False):
            total += next_token_loss_sum(logits, batch["labels"]).double()
            tokens += count_targets(batch["labels"])
    if tokens == 0:
        raise ValueError("probe batches contain no target tokens")
    return float(total) / tokens


class _BypassedLayer(nn.Module):
    """Stands in for a decoder layer and returns its input: the layer is skipped, not copied."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        # Some models read attributes such as `attention_type` off their layers.
        for name in ("attention_type", "layer_idx", "is_sliding"):
            if hasattr(layer, name):
                setattr(self, name, getattr(layer, name))

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextlib.contextmanager
def bypass_layer(model: nn.Module, layer_idx: int) -> Iterator[None]:
    """Temporarily replace decoder layer ``layer_idx`` by an identity."""
    layers = get_decoder_layers(model)
    original = layers[layer_idx]
    layers[layer_idx] = _BypassedLayer(original)
    try:
        yield
    finally:
        layers[layer_idx] = original


def layer_masking_scores(
    model: nn.Module, batches: Sequence[dict], layers: Sequence[int], progress: bool = True
) -> tuple[float, list[float]]:
    """Base loss and, per layer, loss increase when that layer is skipped."""
    from tqdm.auto import tqdm

    base = mean_loss(model, batches)
    scores = []
    for layer_idx in tqdm(layers, desc="masking out layers", unit="layer", disable=not progress):
        with bypass_layer(model, layer_idx):
            scores.append(mean_loss(model, batches) - base)
    return base, scores


# --- gradient-based unit scores --------------------------------------------------------------


def layer_units(model: nn.Module, layers: Sequence[int]) -> tuple[list[str], list[list[nn.Parameter | None]]]:
    """Unit names (union over layers, in model order) and the parameter grid ``[layer][unit]``."""
    decoder_layers = get_decoder_layers(model)
    names: list[str] = []
    per_layer: list[dict[str, nn.Parameter]] = []
    for layer_idx in layers:
        params = dict(decoder_layers[layer_idx].named_parameters())
        per_layer.append(params)
        names.extend(name for name in params if name not in names)
    return names, [[params.get(name) for name in names] for params in per_layer]


@contextlib.contextmanager
def _probe_mode(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Eval mode, gradients only on ``params``; restore modes, flags and ``.grad`` afterwards.

    Re-estimation inside training must not change the next training step: no leftover
    gradients, same train/eval mode, same RNG state.
    """
    was_training = model.training
    all_params = list(model.parameters())
    flags = [p.requires_grad for p in all_params]
    saved_grads = [p.grad for p in all_params]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        model.eval()
        for p in all_params:
            p.requires_grad_(False)
            p.grad = None
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag, grad in zip(all_params, flags, saved_grads):
            p.requires_grad_(flag)
            p.grad = grad
        model.train(was_training)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def unit_gradient_scores(
    model: nn.Module,
    batches: Sequence[dict],
    params: Sequence[nn.Parameter],
    progress: bool = True,
    all_reduce: bool = False,
    fisher: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, float, int]:
    """Per-parameter |w * g| sums, token-weighted over batches, and optionally the empirical Fisher.

    For each batch b with mean loss L_b over its n_b target tokens, with g_b = dL_b/dw:
    ``grad_weight[p] = sum_b (n_b / N) * sum_i |w_i * g_b,i|``.
    With ``fisher``, every sequence s of a batch gets its own backward (g_s = dL_s/dw of its
    mean loss over its n_s tokens): ``fisher[p] = sum_s (n_s / N) * sum_i g_s,i ** 2``, the
    empirical Fisher (squaring a batch's mean gradient instead would not be), and g_b is
    assembled from the g_s, so ``grad_weight`` is the same either way.
    Accumulation happens in small device tensors (one entry per parameter), with one foreach
    reduction per batch and a single host transfer at the end.

    ``all_reduce`` combines ranks when torch.distributed is initialised, in one of two ways
    (pass this rank's `probe_share` of the batches):

    * replicated parameters (DDP): each rank scored its own batches on full tensors; every sum,
      the loss and the token count are summed over ranks.
    * sharded parameters: every rank ran the same batches and sums over its own shard of each
      tensor (`shard_of`); the per-tensor sums are all-reduced across the shards. Under FSDP2
      the reduce-scattered gradient of a shard is that batch's gradient and no full gradient is
      gathered; under ZeRO-3 each rank's gradient is full-size for one batch at a time.

    Returns ``(grad_weight, fisher or None, mean_loss, num_tokens)``.
    """
    from tqdm.auto import tqdm

    device = model_device(model)
    sharded = is_sharded(params)
    combine_batches = all_reduce and dist_ready() and not sharded
    counts = torch.tensor([count_targets(b["labels"]) for b in batches], dtype=torch.float64)
    total_tokens = counts.sum()
    if combine_batches:
        torch.distributed.all_reduce(total_tokens)
    if float(total_tokens) == 0:
        raise ValueError("probe batches contain no target tokens")
    grad_weight = torch.zeros(len(params), dtype=torch.float32, device=device)
    fisher_sums = torch.zeros(len(params), dtype=torch.float32, device=device)
    loss_total = torch.zeros((), dtype=torch.float64, device=device)
    shards = [shard_of(p) for p in params]
    local_params = [weight for weight, _ in shards]
    with _probe_mode(model, params):
        for batch, n_tokens in tqdm(
            list(zip(batches, counts.tolist())), desc="probing gradients", unit="batch", disable=not progress
        ):
            if n_tokens == 0:
                continue
            if fisher:
                grads = None
                for row in _sequences(batch):
                    row_tokens = count_targets(row["labels"])
                    if row_tokens == 0:
                        continue
                    loss_sum = batch_loss_sum(model, row)
                    loss_total += loss_sum.detach().double()
                    row_grads = [cut(g) for g, (_, cut) in zip(probe_gradients(loss_sum / row_tokens, params), shards)]
                    fisher_sums += (
                        row_tokens / float(total_tokens) * torch.stack(torch._foreach_norm(row_grads, 2)).float().pow(2)
                    )
                    share = row_tokens / n_tokens  # g_b = sum_s (n_s / n_b) g_s
                    if grads is None:
                        grads = torch._foreach_mul(row_grads, share)
                    else:
                        torch._foreach_add_(grads, row_grads, alpha=share)
            else:
                loss_sum = batch_loss_sum(model, batch)
                loss_total += loss_sum.detach().double()
                grads = [cut(g) for g, (_, cut) in zip(probe_gradients(loss_sum / n_tokens, params), shards)]
            weight = n_tokens / float(total_tokens)
            products = torch._foreach_mul(grads, local_params)
            grad_weight += weight * torch.stack(torch._foreach_norm(products, 1)).float()
    if combine_batches:
        for tensor in (grad_weight, fisher_sums, loss_total):
            torch.distributed.all_reduce(tensor)
    elif all_reduce and dist_ready() and sharded:
        grad_weight, fisher_sums = sum_over_shards(grad_weight, params), sum_over_shards(fisher_sums, params)
    return grad_weight, fisher_sums if fisher else None, float(loss_total) / float(total_tokens), int(total_tokens)


def _sequences(batch: dict) -> Iterator[dict]:
    """The batch one sequence at a time (for per-example gradients)."""
    for row in range(batch["input_ids"].shape[0]):
        yield {key: value[row : row + 1] for key, value in batch.items()}


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
    txt_split: str = "paragraph",
    device: str = "cpu",
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    text_field: str = "text",
    progress: bool = True,
) -> Path:
    """Compute importance and write ``importance.json`` plus its two PNGs into ``output_dir``.

    ``settings``: the probe, metrics and seed (`ImportanceSection`'s defaults when None);
    ``txt_split``: how ``.txt`` probe files split into documents (see `adept.data.load_documents`);
    ``text_field``: the text column of tabular probe files. The model is loaded in ``dtype`` with
    ``attn_implementation``, the run's precision and kernel.
    """
    from adept.checkpoints import load_model_and_tokenizer
    from adept.data import load_probe_batches
    from adept.plots import plot_layer_bars, plot_unit_heatmap

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
