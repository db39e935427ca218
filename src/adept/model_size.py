"""The size of a decoder and of what a method trains in it, from its config alone (docs/gpu.md).

Counts the parameters of a Llama/Mistral/Qwen2/Qwen3-style decoder from its config (no weights are
built), resolves a method (full CPT, inserted copies, existing layers) into the parameters it trains
and where backward stops, and counts 6N-style training FLOPs per token for MFU. `adept.memory`
turns the same counts into bytes. Reads and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from adept.config import EXPANDED_METHODS, LAYER_SUBSET_METHODS

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


# --- parameters --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder that memory and FLOPs depend on, read from its config."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim


def model_shape(config) -> ModelShape:
    """Read a `ModelShape` from a transformers config; biases follow each family's modeling code.

    Llama and Qwen3 put ``attention_bias`` on q/k/v/o (Llama also ``mlp_bias`` on the MLP), Qwen2 has
    biases on q/k/v only, Mistral none; Qwen3 normalises q and k per head (``q_norm``/``k_norm``).
    """
    model_type = config.model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"memory estimates cover {', '.join(SUPPORTED_MODEL_TYPES)} decoders, not '{model_type}'")
    attention_bias = bool(getattr(config, "attention_bias", False))
    qkv_bias = {"llama": attention_bias, "qwen3": attention_bias, "qwen2": True, "mistral": False}[model_type]
    return ModelShape(
        model_type=model_type,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        vocab_size=config.vocab_size,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        qkv_bias=qkv_bias,
        o_bias=attention_bias and model_type in ("llama", "qwen3"),
        mlp_bias=bool(getattr(config, "mlp_bias", False)) and model_type == "llama",
        qk_norm=model_type == "qwen3",
    )


def decoder_layer_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every parameter tensor of one decoder layer, keyed as in the layer's ``named_parameters()``.

    All layers of these families are alike, so this is also the mean layer an expansion copies.
    """
    s = model_shape(config)
    h, i = s.hidden_size, s.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {}
    for name, out_features, in_features, bias in (
        ("self_attn.q_proj", s.q_dim, h, s.qkv_bias),
        ("self_attn.k_proj", s.kv_dim, h, s.qkv_bias),
        ("self_attn.v_proj", s.kv_dim, h, s.qkv_bias),
        ("self_attn.o_proj", h, s.q_dim, s.o_bias),
    ):
        shapes[f"{name}.weight"] = (out_features, in_features)
        if bias:
            shapes[f"{name}.bias"] = (out_features,)
    if s.qk_norm:
        shapes["self_attn.q_norm.weight"] = (s.head_dim,)
        shapes["self_attn.k_norm.weight"] = (s.head_dim,)
    for name, out_features, in_features in (("mlp.gate_proj", i, h), ("mlp.up_proj", i, h), ("mlp.down_proj", h, i)):
        shapes[f"{name}.weight"] = (out_features, in_features)
        if s.mlp_bias:
            shapes[f"{name}.bias"] = (out_features,)
    shapes["input_layernorm.weight"] = (h,)
    shapes["post_attention_layernorm.weight"] = (h,)
    return shapes


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of a decoder by part; ``lm_head`` is 0 when it shares the embedding matrix."""

    embedding: int
    lm_head: int
    per_layer: int
    per_layer_matmul: int
    num_hidden_layers: int
    final_norm: int

    @property
    def layers(self) -> int:
        return self.per_layer * self.num_hidden_layers

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.layers + self.final_norm


def count_parameters(config, num_new_layers: int = 0) -> ParameterCount:
    """Parameters of the model ``config`` describes, with ``num_new_layers`` inserted layer copies.

    ``per_layer_matmul`` counts the weights that enter matrix products (no biases, no norm gains):
    the N of the FLOP count, and what bf16 autocast makes a copy of.
    """
    s = model_shape(config)
    shapes = decoder_layer_shapes(config)
    matmul = sum(_numel(shape) for key, shape in shapes.items() if key.endswith("proj.weight"))
    embedding = s.vocab_size * s.hidden_size
    return ParameterCount(
        embedding=embedding,
        lm_head=0 if s.tie_word_embeddings else embedding,
        per_layer=sum(_numel(shape) for shape in shapes.values()),
        per_layer_matmul=matmul,
        num_hidden_layers=s.num_hidden_layers + num_new_layers,
        final_norm=s.hidden_size,
    )


# --- what trains -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedParameters:
    """Which parameters of which model train, and where backward stops."""

    counts: ParameterCount
    trainable: int
    trainable_matmul: int
    trainable_layers: int  # decoder layers with trainable weights (all of them for full CPT)
    lowest_trainable_layer: int
    full: bool


def trained_parameters(
    config, method: str, trainable_layers: int | None, lowest_trainable_layer: int | None
) -> TrainedParameters:
    """Resolve a method into parameter counts: full CPT, inserted copies, or existing layers."""
    if method == "full":
        counts = count_parameters(config)
        head_matmul = counts.embedding  # the output projection (tied or not) is a matmul; lookups are not
        matmul = counts.per_layer_matmul * counts.num_hidden_layers + head_matmul
        return TrainedParameters(counts, counts.total, matmul, counts.num_hidden_layers, 0, True)
    if method not in EXPANDED_METHODS + LAYER_SUBSET_METHODS:
        raise ValueError(f"method must be full, {', '.join(EXPANDED_METHODS + LAYER_SUBSET_METHODS)}; got '{method}'")
    if not trainable_layers or trainable_layers < 1:
        raise ValueError(f"method '{method}' needs trainable_layers, the number of layers it trains")
    copies = trainable_layers if method in EXPANDED_METHODS else 0
    counts = count_parameters(config, num_new_layers=copies)
    if trainable_layers > counts.num_hidden_layers:
        raise ValueError(f"trainable_layers={trainable_layers} exceeds the model's {counts.num_hidden_layers} layers")
    # Conservative default: the lowest copy can sit right after layer 0 (index 1 of the expanded
    # model); a method training existing layers may train layer 0 itself.
    lowest = (1 if copies else 0) if lowest_trainable_layer is None else lowest_trainable_layer
    if not 0 <= lowest <= counts.num_hidden_layers - trainable_layers:
        raise ValueError(f"lowest_trainable_layer={lowest} leaves no room for {trainable_layers} trainable layers")
    return TrainedParameters(
        counts,
        trainable_layers * counts.per_layer,
        trainable_layers * counts.per_layer_matmul,
        trainable_layers,
        lowest,
        False,
    )


# --- FLOPs -------------------------------------------------------------------------------------


def training_flops_per_token(
    config,
    *,
    method: str,
    trainable_layers: int | None = None,
    lowest_trainable_layer: int | None = None,
    block_size: int,
) -> float:
    """Model FLOPs of one training token (forward + backward), for MFU.

    N counts matmul weights (decoder projections and the output matrix; no lookups, norms or
    biases). Forward: 2N, plus causal attention 2 * 2 * q * (s/2) = 2*q*s per layer (QK^T and AV
    over s/2 keys on average, as the fused kernels compute it; PaLM/torchtitan count the full
    square, twice this). Backward of full CPT: 4N and twice the attention. For a method training
    a few layers, gradients with respect to activations (2N per layer, twice the attention) are
    needed only from the output down to the lowest trainable layer, and weight gradients (2N)
    only for the trainable layers. Recomputation under gradient checkpointing is not model FLOPs.
    """
    t = trained_parameters(config, method, trainable_layers, lowest_trainable_layer)
    s = model_shape(config)
    layer = 2 * t.counts.per_layer_matmul
    attention = 2 * s.q_dim * block_size
    head = 2 * s.vocab_size * s.hidden_size
    layers = t.counts.num_hidden_layers
    forward = layers * (layer + attention) + head
    if t.full:
        return 3.0 * forward
    activation_grads = (layers - t.lowest_trainable_layer) * (layer + 2 * attention) + head
    weight_grads = t.trainable_layers * layer
    return float(forward + activation_grads + weight_grads)
