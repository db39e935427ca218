"""Architecture adapter: the one place that knows how each supported model family lays out
its decoder layers.

Everything that touches state-dict keys or per-layer config fields goes through an
`ArchitectureSpec`, so expansion, importance and training share one definition of "layer",
"unit" and "output projection" (paper Sec. 3.2: a copy is an identity when its output
projections are zero).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Config fields that are lists with one entry per decoder layer, and integer thresholds that
# index layers. Both must follow the new layer order after expansion.
_LAYER_TYPES = ("layer_types",)


@dataclass(frozen=True)
class ArchitectureSpec:
    """How one model family stores its decoder layers.

    Attributes:
        model_type: `config.model_type` as written by transformers.
        layers_prefix: state-dict prefix of the decoder layer list (keys are
            ``{layers_prefix}.{layer_idx}.{rest}``).
        output_projections: unit names (key suffix without ``.weight``/``.bias``) whose output
            is added to the residual stream; zeroing them makes a layer an identity.
        per_layer_fields: config fields holding one value per layer.
        layer_threshold_fields: integer config fields meaning "layers with index >= value".
    """

    model_type: str
    layers_prefix: str = "model.layers"
    output_projections: tuple[str, ...] = ("self_attn.o_proj", "mlp.down_proj")
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


SUPPORTED_ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.model_type: spec
    for spec in (
        ArchitectureSpec("llama"),
        ArchitectureSpec("mistral"),
        ArchitectureSpec("qwen2", per_layer_fields=_LAYER_TYPES, layer_threshold_fields=("max_window_layers",)),
        ArchitectureSpec("qwen3", per_layer_fields=_LAYER_TYPES, layer_threshold_fields=("max_window_layers",)),
        ArchitectureSpec("gemma2", per_layer_fields=_LAYER_TYPES),
        ArchitectureSpec("gemma3_text", per_layer_fields=_LAYER_TYPES),
        ArchitectureSpec("phi3"),
        ArchitectureSpec("olmo2"),
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
