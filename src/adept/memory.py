"""Per-GPU training memory of a method, from a model config alone (docs/gpu.md).

The bytes one training step holds at its peak under the package's precision policy (frozen
weights in the run dtype, trainable ones as fp32 master weights with fp32 gradients and two fp32
AdamW states, bf16 autocast with SDPA, the logits upcast to fp32 for the loss), from the parameter
counts of `adept.model_size`. Reads and writes nothing; ``python -m adept.memory`` prints
docs/gpu.md's tables.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, fields

from adept.model_size import (  # noqa: F401  (decoder_layer_shapes, training_flops_per_token: imported from here)
    TrainedParameters,
    count_parameters,
    decoder_layer_shapes,
    model_shape,
    trained_parameters,
    training_flops_per_token,
)

SHARDINGS = ("none", "zero2", "fsdp2", "zero3")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FP32 = 4
GIB = 1024**3
# The shapes of docs/gpu.md's table, with the number of inserted copies ADEPT trains there.
DOC_COPIES = 4


# --- memory ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one training step on one GPU, by component; `total` is their sum.

    Attributes:
        weights: every parameter as the GPU holds it (frozen in the run dtype, trainable in fp32;
            bf16 under DeepSpeed; a shard plus the gathered layers under FSDP2/ZeRO-3).
        gradients: gradients of the trainable parameters (DDP's bucket copies included).
        optimizer_states: AdamW's exp_avg and exp_avg_sq, fp32 (its per-tensor step scalars are left out).
        master_weights: DeepSpeed's fp32 copy of the trainable parameters; 0 when they are themselves fp32.
        autocast_copies: the bf16 copies autocast makes of fp32 weights in the forward, alive until backward.
        activations: tensors saved for backward by the decoder layers and the final norm, plus the
            backward working set of one layer (two with gradient checkpointing, which recomputes it).
        logits: the loss's fp32 log-softmax saved for backward and the two fp32 vocab-sized
            gradients of its backward (12 bytes per token and vocabulary entry).
    """

    method: str
    parameters: int
    trainable_parameters: int
    weights: int
    gradients: int
    optimizer_states: int
    master_weights: int
    autocast_copies: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.optimizer_states
            + self.master_weights
            + self.autocast_copies
            + self.activations
            + self.logits
        )

    def as_dict(self) -> dict[str, int | str]:
        """Every field plus ``total``, in bytes (for JSON next to a benchmark's measurements)."""
        return {**asdict(self), "total": self.total}

    def table(self) -> str:
        """A Markdown table of the components in GiB, for docs."""
        rows = [f.name for f in fields(self) if f.name not in ("method", "parameters", "trainable_parameters")]
        lines = [f"| {self.method} | GiB |", "| --- | ---: |"]
        lines += [f"| {name.replace('_', ' ')} | {getattr(self, name) / GIB:.2f} |" for name in rows]
        return "\n".join(lines + [f"| **total** | **{self.total / GIB:.2f}** |"])


@dataclass(frozen=True)
class _Precision:
    """Byte sizes of one run's tensors, and whether autocast casts fp32 trainable weights."""

    frozen: int  # bytes per frozen parameter
    trainable: int  # bytes per trainable parameter as the model holds it
    residual: int  # hidden states between layers (the embedding's dtype)
    compute: int  # matmul inputs and outputs
    casts: bool  # fp32 trainable weights under autocast: each is cast, and so is an fp32 norm output per consumer


def _precision(dtype: str, sharding: str, full: bool) -> _Precision:
    """Apply the precision policy: frozen weights in ``dtype``, trainable ones in fp32 under autocast.

    DeepSpeed (ZeRO-2/3) instead casts every parameter to bf16 and keeps fp32 master copies in
    its optimizer; FSDP2 all-gathers parameters in bf16 (accelerate's MixedPrecisionPolicy under
    ``bf16: true``), so autocast has nothing left to cast there.
    """
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got '{dtype}'")
    low = DTYPE_BYTES[dtype]
    if low == FP32:
        return _Precision(FP32, FP32, FP32, FP32, False)
    if sharding in ("zero2", "zero3"):
        return _Precision(low, low, low, low, False)
    casts = sharding == "none"
    # Under full CPT the embedding itself is an fp32 trainable weight, so the residual stream is fp32.
    return _Precision(low, FP32, FP32 if full and casts else low, low, casts)


def _norm_saved(width: int, rows: int, input_grad: bool, weight_trains: bool, input_bytes: int) -> int:
    """Bytes an RMSNorm saves per token: fp32 input and rsqrt for the input's gradient, normed input for the gain's.

    HF's RMSNorm computes in fp32 (``x.to(float32)``) and multiplies the gain with the result cast
    back to the input dtype; ``rows`` is the number of normalised vectors per token (heads for qk-norms).
    """
    saved = (FP32 * width + FP32 * rows) if input_grad else 0
    return saved + (input_bytes * width if weight_trains else 0)


def _layer_saved(config, p: _Precision, *, trainable: bool, input_grad: bool = True) -> int:
    """Bytes one decoder layer saves for backward per token, under autocast with SDPA.

    The terms, with h hidden, i intermediate, q/kv the query/key-value widths, c the compute bytes:
    the two RMSNorms (`_norm_saved`); q, k, v and the attention output saved by SDPA's fused
    kernel, c*(2q + 2kv), plus its fp32 log-sum-exp per head (no s x s matrix; o_proj's input is a
    view of the output); the MLP's gate output, SiLU output and up output, 3*c*i. A trainable
    layer also saves the inputs of its projections for their weight gradients: the attention
    and MLP norm outputs (cast once per projection when the norm's gain is fp32: 3 + 2 copies of
    c*h) and down_proj's input c*i. Qwen3's per-head q/k norms add their own saved inputs.
    Checked against `torch.autograd.graph.saved_tensors_hooks` in tests/test_memory.py.
    """
    s = model_shape(config)
    h, i, q, kv, c = s.hidden_size, s.intermediate_size, s.q_dim, s.kv_dim, p.compute
    attention = c * (2 * q + 2 * kv) + FP32 * s.num_attention_heads
    mlp = 3 * c * i
    saved = _norm_saved(h, 1, input_grad, trainable, p.residual) + _norm_saved(h, 1, True, trainable, p.residual)
    if s.qk_norm:
        saved += _norm_saved(q, s.num_attention_heads, True, trainable, c)
        saved += _norm_saved(kv, s.num_key_value_heads, True, trainable, c)
    if trainable:
        saved += (5 if p.casts else 2) * c * h + c * i
    return saved + attention + mlp


def _head_saved(config, p: _Precision, full: bool) -> int:
    """Per token: the final norm (the gradient must reach the layers below), lm_head's input, the log-softmax."""
    s = model_shape(config)
    norm = _norm_saved(s.hidden_size, 1, True, full, p.residual)
    lm_head_input = p.compute * s.hidden_size if full else 0
    return norm + lm_head_input + FP32 * s.vocab_size


def _saved_per_token(config, t: TrainedParameters, p: _Precision, gradient_checkpointing: bool) -> int:
    """Bytes saved for backward per token at the end of the forward; see `saved_activation_bytes`."""
    head = _head_saved(config, p, t.full)
    if gradient_checkpointing:
        return t.counts.num_hidden_layers * p.residual * model_shape(config).hidden_size + head
    saving = t.counts.num_hidden_layers - t.lowest_trainable_layer
    trainable = t.trainable_layers * _layer_saved(config, p, trainable=True)
    frozen = (saving - t.trainable_layers) * _layer_saved(config, p, trainable=False)
    # Under a method training a few layers, the lowest one's input needs no gradient (its first norm saves less).
    lowest = (
        0
        if t.full
        else _layer_saved(config, p, trainable=True) - _layer_saved(config, p, trainable=True, input_grad=False)
    )
    return trainable + frozen - lowest + head


def saved_activation_bytes(
    config,
    *,
    method: str,
    trainable_layers: int | None = None,
    lowest_trainable_layer: int | None = None,
    dtype: str = "bfloat16",
    micro_batch_size: int,
    block_size: int,
    gradient_checkpointing: bool = False,
    sharding: str = "none",
) -> int:
    """Bytes autograd holds for backward at the end of the forward (what `saved_tensors_hooks` sees).

    Layers below the lowest trainable one save nothing: nothing below them needs a gradient. With
    gradient checkpointing every layer saves only its input instead, all layers included, since
    transformers' ``activation_checkpointing_enable`` makes the embedding output require grad.
    The logits' fp32 log-softmax is included; the transient of the loss's backward is not.
    Arguments as in `estimate_training_memory`.
    """
    t = trained_parameters(config, method, trainable_layers, lowest_trainable_layer)
    p = _precision(dtype, sharding, t.full)
    return micro_batch_size * block_size * _saved_per_token(config, t, p, gradient_checkpointing)


def estimate_training_memory(
    config,
    *,
    method: str,
    trainable_layers: int | None = None,
    lowest_trainable_layer: int | None = None,
    dtype: str = "bfloat16",
    micro_batch_size: int,
    block_size: int,
    gradient_checkpointing: bool,
    world_size: int = 1,
    sharding: str = "none",
) -> MemoryEstimate:
    """Peak GPU memory of one training step of ``method`` on the model ``config`` describes.

    Args:
        config: a transformers config of the *base* model (llama, mistral, qwen2, qwen3).
        method: ``full``; ``adept``/``llama-pro``/``adept-no-stage2`` (train ``trainable_layers``
            inserted copies of the mean layer); ``freeze``/``adept-no-stage1`` (train that many
            existing layers).
        trainable_layers: copies (or layers) that train; ignored for ``full``.
        lowest_trainable_layer: index of the lowest trainable layer in the trained model;
            backward stops there. Default: 1 for copies (a copy of layer 0), 0 otherwise.
        dtype: the run's ``dtype``; ``bfloat16`` means bf16 frozen weights and bf16 autocast.
        micro_batch_size, block_size: sequences per GPU per forward and their length.
        gradient_checkpointing: each layer keeps only its input and is recomputed in backward.
        world_size: GPUs; sharding divides over them as `_state_bytes` documents.
        sharding: ``none`` (one GPU, or DDP), ``zero2``, ``fsdp2`` or ``zero3``.
    """
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {', '.join(SHARDINGS)}, got '{sharding}'")
    if world_size < 1 or micro_batch_size < 1 or block_size < 1:
        raise ValueError("world_size, micro_batch_size and block_size must be positive")
    t = trained_parameters(config, method, trainable_layers, lowest_trainable_layer)
    p = _precision(dtype, sharding, t.full)
    tokens = micro_batch_size * block_size
    log_softmax = FP32 * model_shape(config).vocab_size
    # Backward working set: one layer's gradients, about its saved tensors; a recomputed layer's too.
    working = _layer_saved(config, p, trainable=True) * (2 if gradient_checkpointing else 1)
    activations = _saved_per_token(config, t, p, gradient_checkpointing) - log_softmax + working
    return MemoryEstimate(
        method=method,
        parameters=t.counts.total,
        trainable_parameters=t.trainable,
        activations=tokens * activations,
        logits=tokens * 3 * log_softmax,
        **_state_bytes(t, p, world_size, sharding),
    )


def _state_bytes(t: TrainedParameters, p: _Precision, world_size: int, sharding: str) -> dict[str, int]:
    """Weights, gradients, optimizer states, master weights and autocast copies on one GPU.

    ``none`` replicates everything (DDP with ``world_size`` > 1 also holds its gradient buckets, a
    second copy of the gradients). ZeRO-2 divides gradients, optimizer states and DeepSpeed's fp32
    master weights by ``world_size``; FSDP2 and ZeRO-3 divide the parameters too, plus the
    unsharded parameters of the units in flight (two decoder layers and the embedding/output
    matrices, in the compute dtype).
    """
    w = world_size
    frozen = t.counts.total - t.trainable
    weights = p.frozen * frozen + p.trainable * t.trainable
    gradients = p.trainable * t.trainable
    optimizer = 2 * FP32 * t.trainable
    master = FP32 * t.trainable if sharding in ("zero2", "zero3") else 0
    if sharding == "none":
        return dict(
            weights=weights,
            gradients=gradients * (2 if w > 1 else 1),
            optimizer_states=optimizer,
            master_weights=0,
            autocast_copies=p.compute * t.trainable_matmul if p.casts else 0,
        )
    if sharding in ("fsdp2", "zero3"):
        in_flight = 2 * t.counts.per_layer + t.counts.embedding + t.counts.lm_head
        weights = weights // w + p.compute * in_flight
    return dict(
        weights=weights,
        gradients=gradients // w,
        optimizer_states=optimizer // w,
        master_weights=master // w,
        autocast_copies=0,
    )


# --- docs tables -------------------------------------------------------------------------------


def reference_configs() -> dict[str, object]:
    """Real model shapes built in code (no download): Qwen2.5-0.5B, Qwen3-1.7B and Llama-3.1-8B.

    The values are those of the published config.json files; rope scaling, which changes no
    size, is left out. transformers is imported here only, so `adept.memory` stays light.
    """
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    return {
        "Qwen2.5-0.5B": Qwen2Config(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
            max_position_embeddings=32768,
            rope_theta=1e6,
        ),
        "Qwen3-1.7B": Qwen3Config(
            hidden_size=2048,
            intermediate_size=6144,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            tie_word_embeddings=True,
            max_position_embeddings=40960,
            rope_theta=1e6,
        ),
        "Llama-3.1-8B": LlamaConfig(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            tie_word_embeddings=False,
            max_position_embeddings=131072,
            rope_theta=5e5,
        ),
    }


def memory_table(
    configs: dict[str, object],
    *,
    block_size: int,
    micro_batch_size: int,
    copies: int = DOC_COPIES,
    dtype: str = "bfloat16",
    gpus: int = 8,
    sharding: str = "fsdp2",
) -> str:
    """Markdown: GiB per GPU of ADEPT and full CPT, with and without checkpointing, on 1 and ``gpus`` GPUs."""
    head = (
        f"| model | params | checkpointing | ADEPT, 1 GPU | full, 1 GPU | ADEPT, {gpus} GPUs ({sharding}) "
        f"| full, {gpus} GPUs ({sharding}) |"
    )
    lines = [head, "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for name, config in configs.items():
        for checkpointing in (False, True):
            cells = []
            for world, shard in ((1, "none"), (gpus, sharding)):
                for method in ("adept", "full"):
                    estimate = estimate_training_memory(
                        config,
                        method=method,
                        trainable_layers=copies,
                        dtype=dtype,
                        micro_batch_size=micro_batch_size,
                        block_size=block_size,
                        gradient_checkpointing=checkpointing,
                        world_size=world,
                        sharding=shard,
                    )
                    cells.append(f"{estimate.total / GIB:.1f}")
            billions = count_parameters(config).total / 1e9
            lines.append(
                f"| {name} | {billions:.2f}B | {'yes' if checkpointing else 'no'} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def docs_tables(block_size: int = 4096, micro_batch_size: int = 2, copies: int = DOC_COPIES) -> str:
    """The memory tables of docs/gpu.md (the recipe's block and micro-batch).

    Every reference shape, then Qwen3-1.7B's components.
    """
    configs = reference_configs()
    settings = (
        f"bf16, block {block_size}, micro-batch {micro_batch_size}, ADEPT with {copies} copies "
        f"(lowest copy at layer 1, the conservative default)"
    )
    parts = [
        f"Per-GPU peak memory in GiB ({settings}):",
        "",
        memory_table(configs, block_size=block_size, micro_batch_size=micro_batch_size, copies=copies),
    ]
    for method in ("adept", "full"):
        estimate = estimate_training_memory(
            configs["Qwen3-1.7B"],
            method=method,
            trainable_layers=copies,
            micro_batch_size=micro_batch_size,
            block_size=block_size,
            gradient_checkpointing=True,
            world_size=8,
            sharding="fsdp2",
        )
        parts += ["", f"Qwen3-1.7B, {method}, checkpointing, 8 GPUs (fsdp2):", "", estimate.table()]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> str:
    """``python -m adept.memory [--block-size N --micro-batch-size N --copies N]``: the docs tables."""
    parser = argparse.ArgumentParser(prog="python -m adept.memory", description=docs_tables.__doc__)
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--copies", type=int, default=DOC_COPIES)
    args = parser.parse_args(argv)
    return docs_tables(args.block_size, args.micro_batch_size, args.copies)


if __name__ == "__main__":
    sys.stdout.write(main())
