"""The passes over the probe corpus that importance is made of (paper Sec. 3.1).

The probe's mean loss, the loss with one decoder layer skipped (the paper's "masking out"), and
per-tensor gradient x weight |w * dL/dw| sums with the optional empirical Fisher, on one process
or combined over ranks. `adept.importance` builds layer and unit scores from them offline, and
`adept.stage2` re-estimates unit scores with the same code inside training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from adept.architectures import get_decoder_layers
from adept.distributed import dist_ready, is_sharded, probe_gradients, shard_of, sum_over_shards
from adept.forward import count_targets, forward_batches, model_device, next_token_loss_sum

PROBE_INPUTS = ("input_ids", "attention_mask")  # probe batches are padded


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


def _layer_attributes(stand_in: nn.Module, layer: nn.Module) -> None:
    # Some models read attributes such as `attention_type` off their layers.
    for name in ("attention_type", "layer_idx", "is_sliding"):
        if hasattr(layer, name):
            setattr(stand_in, name, getattr(layer, name))


class _BypassedLayer(nn.Module):
    """Stands in for a decoder layer and returns its input: the layer is skipped, not copied."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        _layer_attributes(self, layer)

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _ReplayedLayer(nn.Module):
    """Stands in for a decoder layer whose output on the current batch is already known."""

    def __init__(self, layer: nn.Module, output):
        super().__init__()
        _layer_attributes(self, layer)
        self.output = output

    def forward(self, hidden_states, *args, **kwargs):
        return self.output


@contextlib.contextmanager
def bypass_layer(model: nn.Module, layer_idx: int, replay: Sequence | None = None) -> Iterator[None]:
    """Temporarily replace decoder layer ``layer_idx`` by an identity.

    ``replay`` holds the outputs of the layers below it on the batch about to run (from an
    unmasked pass); those layers then return them instead of computing them again.
    """
    layers = get_decoder_layers(model)
    below = range(layer_idx) if replay is not None else range(0)
    originals = {index: layers[index] for index in [*below, layer_idx]}
    for index in below:
        layers[index] = _ReplayedLayer(originals[index], replay[index])
    layers[layer_idx] = _BypassedLayer(originals[layer_idx])
    try:
        yield
    finally:
        for index, layer in originals.items():
            layers[index] = layer


@contextlib.contextmanager
def _recorded_layer_outputs(model: nn.Module) -> Iterator[list]:
    """Inside the block, every decoder layer's output lands in the yielded list, in layer order."""
    layers = get_decoder_layers(model)
    outputs: list = [None] * len(layers)

    def store(index):
        return lambda module, args, output: outputs.__setitem__(index, output)

    handles = [layer.register_forward_hook(store(index)) for index, layer in enumerate(layers)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def layer_masking_scores(
    model: nn.Module, batches: Sequence[dict], layers: Sequence[int], progress: bool = True
) -> tuple[float, list[float]]:
    """Base loss and, per layer, loss increase when that layer is skipped.

    Batch by batch: one unmasked pass records every layer's output, then each masked pass
    replays the layers below the skipped one, so a pass computes only the layers above it (about
    half the layer work of running the whole model once per layer), with the same result.
    """
    device = model_device(model)
    base = torch.zeros((), dtype=torch.float64, device=device)
    masked = torch.zeros(len(layers), dtype=torch.float64, device=device)
    tokens = 0
    with tqdm(
        total=len(batches) * (len(layers) + 1), desc="masking out layers", unit="pass", disable=not progress
    ) as bar:
        for batch in batches:
            with _recorded_layer_outputs(model) as outputs:
                base += batch_loss_sum(model, batch).double()
            bar.update()
            for position, layer_idx in enumerate(layers):
                with bypass_layer(model, layer_idx, replay=outputs):
                    masked[position] += batch_loss_sum(model, batch).double()
                bar.update()
            tokens += count_targets(batch["labels"])
    if tokens == 0:
        raise ValueError("probe batches contain no target tokens")
    base_loss = float(base) / tokens
    return base_loss, [float(total) / tokens - base_loss for total in masked]


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
            with torch.no_grad():  # the weights require grad here: a graph would keep every batch's gradients
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
