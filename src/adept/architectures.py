"""Architecture adapter: the one place that knows how each supported model family lays out
its decoder layers.

Everything that touches state-dict keys or per-layer config fields goes through an
`ArchitectureSpec`, so expansion, importance and training share one definition of "layer",
"unit" and "output projection" (paper Sec. 3.2: a copy is an identity when what it adds to the
residual stream is zero: its output projections, or on post-norm architectures the gain of the
norm that follows them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Config fields that are lists with one entry per decoder layer, and integer thresholds that
# index layers. Both must follow the new layer order after expansion.
_LAYER_TYPES = ("layer_types",)
# Norms applied to an output projection's result before the residual add, with the gain that
# makes them output zero: Gemma's RMSNorm computes x * (1 + w), OLMo2's x * w.
_GEMMA_POST_NORMS = (
    ("self_attn.o_proj", "post_attention_layernorm", -1.0),
    ("mlp.down_proj", "post_feedforward_layernorm", -1.0),
)
_OLMO2_POST_NORMS = (
    ("self_attn.o_proj", "post_attention_layernorm", 0.0),
    ("mlp.down_proj", "post_feedforward_layernorm", 0.0),
)


@dataclass(frozen=True)
class ArchitectureSpec:
    """How one model family stores its decoder layers.

    Attributes:
        model_type: `config.model_type` as written by transformers.
        layers_prefix: state-dict prefix of the decoder layer list (keys are
            ``{layers_prefix}.{layer_idx}.{rest}``).
        output_projections: unit names (key suffix without ``.weight``/``.bias``) whose output
            is added to the residual stream; zeroing them makes a layer an identity.
        post_norms: ``(projection, norm, zero_gain)`` for architectures that normalise a
            projection's output before adding it (Gemma2/3, OLMo2). There the copy's zero goes
            into the norm's gain (``zero_gain`` is the weight value at which the norm outputs 0:
            -1 for Gemma's ``x * (1 + w)``, 0 for OLMo2's ``x * w``) and the projection is copied:
            a zero projection would be rescaled back to full size by the norm after one step.
        per_layer_fields: config fields holding one value per layer.
        layer_threshold_fields: integer config fields meaning "layers with index >= value".
    """

    model_type: str
    layers_prefix: str = "model.layers"
    output_projections: tuple[str, ...] = ("self_attn.o_proj", "mlp.down_proj")
    post_norms: tuple[tuple[str, str, float], ...] = ()
    per_layer_fields: tuple[str, ...] = ()
    layer_threshold_fields: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def layer_key_pattern(self) -> re.Pattern[str]:
        """Anchored pattern that matches exactly the keys of decoder layers."""
        return re.compile(rf"^{re.escape(self.layers_prefix)}\.(\d+)\.(.+)$")

    def split_layer_key(self, key: str) -> tuple[int, str] | None:
        """Return ``(layer_idx, unit_key)`` for a decoder-layer key, ``None`` otherwise."""
        match = self.layer_key_pattern.match(key)
        if match is None:
            return None
        return int(match.group(1)), match.group(2)

    def layer_key(self, layer_idx: int, unit_key: str) -> str:
        return f"{self.layers_prefix}.{layer_idx}.{unit_key}"

    def is_output_projection(self, unit_key: str) -> bool:
        """True for the weight and bias of an attention or MLP output projection."""
        for name in self.output_projections:
            if unit_key in (f"{name}.weight", f"{name}.bias"):
                return True
        return False

    def identity_units(self) -> tuple[str, ...]:
        """The modules whose tensors a copy sets so that it adds nothing to the residual stream."""
        normed = {projection: norm for projection, norm, _ in self.post_norms}
        return tuple(normed.get(name, name) for name in self.output_projections)

    def copy_init_value(self, unit_key: str) -> float | None:
        """The constant a copy's tensor is set to (None: copied from the source layer).

        Output projections are zeroed (weight and bias) unless a norm follows them; then that
        norm's gain gets its zero value instead, never both (a product of two zeros would get
        no gradient and the copy could never grow).
        """
        normed = {projection for projection, _, _ in self.post_norms}
        for _projection, norm, zero_gain in self.post_norms:
            if unit_key == f"{norm}.weight":
                return zero_gain
        if self.is_output_projection(unit_key) and unit_key.rsplit(".", 1)[0] not in normed:
            return 0.0
        return None


SUPPORTED_ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.model_type: spec
    for spec in (
        ArchitectureSpec("llama"),
        ArchitectureSpec("mistral"),
        ArchitectureSpec("qwen2", per_layer_fields=_LAYER_TYPES, layer_threshold_fields=("max_window_layers",)),
        ArchitectureSpec("qwen3", per_layer_fields=_LAYER_TYPES, layer_threshold_fields=("max_window_layers",)),
        ArchitectureSpec("gemma2", post_norms=_GEMMA_POST_NORMS, per_layer_fields=_LAYER_TYPES),
        ArchitectureSpec("gemma3_text", post_norms=_GEMMA_POST_NORMS, per_layer_fields=_LAYER_TYPES),
        ArchitectureSpec("phi3"),
        ArchitectureSpec("olmo2", post_norms=_OLMO2_POST_NORMS),
    )
}


class UnsupportedArchitectureError(ValueError):
    """Raised for a model type the adapter does not know."""


def get_architecture(model_type: str) -> ArchitectureSpec:
    """Look up the adapter for ``model_type`` or fail with the list of supported ones."""
    try:
        return SUPPORTED_ARCHITECTURES[model_type]
    except KeyError:
        supported = ", ".join(sorted(SUPPORTED_ARCHITECTURES))
        raise UnsupportedArchitectureError(
            f"model_type '{model_type}' is not supported; supported model types: {supported}"
        ) from None


def get_decoder_layers(model) -> Any:
    """Return the ``nn.ModuleList`` of decoder layers of a causal LM built by transformers."""
    spec = get_architecture(model.config.model_type)
    module = model
    for name in spec.layers_prefix.split("."):
        module = getattr(module, name)
    return module
