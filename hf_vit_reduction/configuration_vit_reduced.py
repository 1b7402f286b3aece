"""ViTReduced model configuration: a ViT whose MLPs are reduced by one of the paper's strategies."""

import math
import numbers

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

REDUCTION_STRATEGIES = ("baseline", "grouped", "shallow", "thin")
# What the encoder's output is pooled to for the classifier: the class token, the mean of the patch tokens, or
# multi-head attention pooling with a learned query (MAP, as SigLIP).
POOLINGS = ("token", "avg", "map")

# `reduction_mlp_ratio=None` resolves to these (arXiv 2512.01059, section 3).
DEFAULT_REDUCTION_MLP_RATIOS = {
    "baseline": None,
    "grouped": 1 / math.sqrt(2),
    "shallow": 0.5,
    "thin": 2.0,
}

PRESETS = {
    "tiny": {
        "hidden_size": 192,
        "num_hidden_layers": 12,
        "num_attention_heads": 3,
        "intermediate_size": 768,
    },
    "small": {
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
    },
    "base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    # Sized for the embedded 8x8 digits upscaled to 32 px: trains to >90% in minutes on two CPU cores.
    "digits": {
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 256,
        "image_size": 32,
        "patch_size": 4,
    },
}

# Fields that fix the shapes of the unreduced weights.
SHAPE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "image_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
)
# The ViT-family options (timm's VisionTransformer arguments): each off by default, today's ViT. Every one changes
# the weights' keys or what the same weights compute, so a checkpoint loads only with its own values.
FAMILY_FIELDS = (
    "class_token",
    "distillation_token",
    "num_register_tokens",
    "no_embed_class",
    "layer_scale_init_value",
    "pre_norm",
    "pooling",
    "fc_norm",
    "hidden_act",
)
# Fields that fix the shapes or the sharing of the weights, or what they compute: a checkpoint only loads into an
# identical set.
ARCHITECTURE_FIELDS = (
    *SHAPE_FIELDS,
    *FAMILY_FIELDS,
    "reduction_strategy",
    "reduction_mlp_ratio",
    "mlp_share_group_size",
)


class ViTReducedConfig(PreTrainedConfig):
    r"""
    Configuration of a [`ViTReducedModel`]. Defaults are ViT-B/16 at 224 px with timm's LayerNorm eps.

    Args:
        intermediate_size (`int`, defaults to 3072):
            Hidden width of the unreduced MLP. `shallow` prunes this width; `thin` ignores it.
        reduction_strategy (`str`, *optional*):
            `"baseline"` (or `None`), `"grouped"` (blocks `k*i ... k*i+k-1` share one MLP), `"shallow"` (the full MLP
            is initialized, then only its first hidden units are kept) or `"thin"` (MLP width `hidden_size * ratio`).
        reduction_mlp_ratio (`float`, *optional*):
            grouped: scale of the shared MLP's initial weights (default 1/sqrt(2)); shallow: fraction of the hidden
            units kept (default 0.5); thin: MLP ratio (default 2.0). `None` takes the strategy's default.
        mlp_share_group_size (`int`, defaults to 2):
            Number of adjacent blocks that share one MLP under `grouped`.
        drop_path_rate (`float`, defaults to 0.0):
            Stochastic depth of the last block; it rises linearly from 0 at the first block, as in timm.
        hidden_act (`str`, defaults to `"gelu"`):
            The MLPs' activation, a key of Transformers' `ACT2FN` (`"quick_gelu"` for OpenAI's CLIP towers).
        class_token (`bool`, defaults to `True`):
            Prepend a learned class token (timm's `class_token`).
        distillation_token (`bool`, defaults to `False`):
            A second prepended token with its own classifier (DeiT's distillation token); the two heads' logits are
            averaged, as DeiT does at inference. Needs the class token and `pooling="token"`.
        num_register_tokens (`int`, defaults to 0):
            Learned tokens after the class (and distillation) token that no head reads (timm's `reg_tokens`).
        no_embed_class (`bool`, defaults to `False`):
            Position embeddings on the patches only, added before the prefix tokens are prepended (DeiT III,
            DINOv2 with registers); otherwise the prefix tokens have their own.
        layer_scale_init_value (`float`, *optional*):
            Initial value of LayerScale's per-channel scales on both residual branches of every block (timm's
            `init_values`: DeiT III, DINOv2); `None` has no LayerScale.
        pre_norm (`bool`, defaults to `False`):
            A LayerNorm between the embeddings and the first block (CLIP's `pre_layrnorm`, timm's `pre_norm`).
        pooling (`str`, defaults to `"token"`):
            What the classifier reads: `"token"` the class token, `"avg"` the mean of the patch tokens, `"map"`
            attention pooling of the patch tokens by one learned query (SigLIP).
        fc_norm (`bool`, defaults to `False`):
            The final LayerNorm acts on the pooled features instead of on every token (timm's `fc_norm`).

    Example:

    ```python
    >>> from hf_vit_reduction import ViTReducedConfig, ViTReducedForImageClassification
    >>> config = ViTReducedConfig(reduction_strategy="shallow", num_labels=1000)
    >>> model = ViTReducedForImageClassification(config)
    >>> model.config.mlp_hidden_size
    1536
    ```"""

    model_type = "vit_reduced"
    # A config saved on its own carries its code for remote-code readers, as the model and processor do.
    _auto_class = "AutoConfig"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    reduction_strategy: str | None = None
    reduction_mlp_ratio: float | None = None
    mlp_share_group_size: int = 2
    drop_path_rate: float = 0.0
    class_token: bool = True
    distillation_token: bool = False
    num_register_tokens: int = 0
    no_embed_class: bool = False
    layer_scale_init_value: float | None = None
    pre_norm: bool = False
    pooling: str = "token"
    fc_norm: bool = False

    def __post_init__(self, **kwargs):
        self.reduction_strategy = self.reduction_strategy or "baseline"
        self._validate()
        if self.reduction_mlp_ratio is None:
            self.reduction_mlp_ratio = DEFAULT_REDUCTION_MLP_RATIOS[self.reduction_strategy]
        self.reduction_mlp_ratio = None if self.reduction_mlp_ratio is None else float(self.reduction_mlp_ratio)
        super().__post_init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "ViTReducedConfig":
        """A config of a named size (`tiny`, `small`, `base`, `digits`); keyword arguments override it."""
        if name not in PRESETS:
            raise ValueError(f"preset={name!r} is not known; allowed: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **kwargs})

    @property
    def mlp_hidden_size(self) -> int:
        """Hidden width of every MLP after the reduction."""
        if self.reduction_strategy == "shallow":
            return int(self.intermediate_size * self.reduction_mlp_ratio)
        if self.reduction_strategy == "thin":
            return int(self.hidden_size * self.reduction_mlp_ratio)
        return self.intermediate_size

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token, the distillation token, the registers (as timm's)."""
        return int(self.class_token) + int(self.distillation_token) + self.num_register_tokens

    @property
    def num_positions(self) -> int:
        """Rows of the position embedding: the patches, and the prefix tokens unless `no_embed_class`."""
        grid = self.image_size // self.patch_size
        return grid * grid + (0 if self.no_embed_class else self.num_prefix_tokens)

    @property
    def num_unique_mlps(self) -> int:
        if self.reduction_strategy == "grouped":
            return self.num_hidden_layers // self.mlp_share_group_size
        return self.num_hidden_layers

    def mlp_index(self, layer_index: int) -> int:
        """Index of the MLP that block `layer_index` uses."""
        if self.reduction_strategy == "grouped":
            return layer_index // self.mlp_share_group_size
        return layer_index

    def first_block_of_mlp(self, layer_index: int) -> int:
        """Index of the first block that uses block `layer_index`'s MLP: the block it is initialized and saved under."""
        if self.reduction_strategy == "grouped":
            return self.mlp_index(layer_index) * self.mlp_share_group_size
        return layer_index

    def _validate(self):
        def fail(field, allowed):
            raise ValueError(f"{field}={getattr(self, field)!r} is not valid; allowed: {allowed}")

        def is_int(value):
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)

        def is_real(value):
            return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)

        for field in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
        ):
            if not is_int(getattr(self, field)) or getattr(self, field) < 1:
                fail(field, "an integer >= 1")
        for field in ("image_size", "patch_size"):
            if not is_int(getattr(self, field)) or getattr(self, field) < 1:
                fail(field, "an integer >= 1 (square images and patches)")
        if not is_int(self.num_channels) or self.num_channels < 1:
            fail("num_channels", "an integer >= 1")
        if self.image_size % self.patch_size:
            fail("patch_size", f"a divisor of image_size={self.image_size}")
        if self.hidden_size % self.num_attention_heads:
            fail("num_attention_heads", f"a divisor of hidden_size={self.hidden_size}")
        for field in (
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "drop_path_rate",
        ):
            if not is_real(getattr(self, field)) or not 0 <= getattr(self, field) < 1:
                fail(field, "a number in [0, 1)")
        if not is_real(self.layer_norm_eps) or self.layer_norm_eps <= 0:
            fail("layer_norm_eps", "a number > 0")
        if not is_real(self.initializer_range) or self.initializer_range < 0:
            fail("initializer_range", "a number >= 0")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACT2FN:
            fail("hidden_act", "a name in transformers.activations.ACT2FN, e.g. 'gelu', 'quick_gelu'")
        self._validate_family_options(fail, is_int, is_real)

        strategy = self.reduction_strategy
        if strategy not in REDUCTION_STRATEGIES:
            fail(
                "reduction_strategy",
                f"None or one of {', '.join(map(repr, REDUCTION_STRATEGIES))}",
            )
        if not is_int(self.mlp_share_group_size) or self.mlp_share_group_size < 1:
            fail("mlp_share_group_size", "an integer >= 1")
        if strategy == "grouped" and self.num_hidden_layers % self.mlp_share_group_size:
            fail(
                "mlp_share_group_size",
                f"a divisor of num_hidden_layers={self.num_hidden_layers}",
            )

        ratio = self.reduction_mlp_ratio
        if ratio is None:
            return
        if strategy == "baseline":
            fail(
                "reduction_mlp_ratio",
                "None with reduction_strategy='baseline' (it reduces nothing)",
            )
        if not is_real(ratio) or ratio <= 0:
            fail(
                "reduction_mlp_ratio",
                f"a number > 0 for reduction_strategy={strategy!r}",
            )
        if strategy == "shallow":
            if ratio > 1:
                fail(
                    "reduction_mlp_ratio",
                    "a fraction in (0, 1] of intermediate_size for 'shallow' (it prunes)",
                )
            if int(self.intermediate_size * ratio) < 1:
                fail(
                    "reduction_mlp_ratio",
                    f"a fraction that keeps >= 1 of intermediate_size={self.intermediate_size}",
                )
        if strategy == "thin" and int(self.hidden_size * ratio) < 1:
            fail(
                "reduction_mlp_ratio",
                f"a ratio that gives >= 1 hidden unit with hidden_size={self.hidden_size}",
            )

    def _validate_family_options(self, fail, is_int, is_real):
        for field in ("class_token", "distillation_token", "no_embed_class", "pre_norm", "fc_norm"):
            if not isinstance(getattr(self, field), bool):
                fail(field, "True or False")
        if not is_int(self.num_register_tokens) or self.num_register_tokens < 0:
            fail("num_register_tokens", "an integer >= 0")
        if self.layer_scale_init_value is not None and not is_real(self.layer_scale_init_value):
            fail("layer_scale_init_value", "None (no LayerScale) or a finite number")
        if self.pooling not in POOLINGS:
            fail("pooling", f"one of {', '.join(map(repr, POOLINGS))}")
        if self.pooling == "token" and not self.class_token:
            fail("pooling", "'avg' or 'map' with class_token=False ('token' pools the class token)")
        if self.distillation_token:
            if not self.class_token:
                fail("distillation_token", "False with class_token=False (DeiT's two heads read two tokens)")
            if self.pooling != "token":
                fail("pooling", "'token' with distillation_token=True (the class head reads the class token)")
            if self.fc_norm:
                fail("fc_norm", "False with distillation_token=True (both heads read the normed tokens)")


__all__ = ["ViTReducedConfig"]
