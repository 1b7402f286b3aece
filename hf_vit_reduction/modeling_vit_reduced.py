"""PyTorch ViTReduced: ViT whose MLPs are reduced by sharing (grouped) or width (shallow, thin).

Self-contained (torch, transformers and this folder only) so that it runs as Hub remote code.
"""

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_vit_reduced import ARCHITECTURE_FIELDS, ViTReducedConfig

AUTO_MAP = {
    "AutoConfig": "configuration_vit_reduced.ViTReducedConfig",
    "AutoModel": "modeling_vit_reduced.ViTReducedModel",
    "AutoModelForImageClassification": "modeling_vit_reduced.ViTReducedForImageClassification",
}


class ViTReducedEmbeddings(nn.Module):
    """CLS token, patch embedding and learned position embedding."""

    def __init__(self, config: ViTReducedConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.grid_size = config.image_size // config.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.grid_size**2 + 1, config.hidden_size))
        self.projection = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Bicubic resize of the patch position embeddings to another input resolution."""
        dim = self.position_embeddings.shape[-1]
        grid = self.position_embeddings[:, 1:].reshape(1, self.grid_size, self.grid_size, dim).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(
            grid,
            size=(height // self.patch_size, width // self.patch_size),
            mode="bicubic",
            align_corners=False,
        )
        return torch.cat(
            (
                self.position_embeddings[:, :1],
                grid.permute(0, 2, 3, 1).reshape(1, -1, dim),
            ),
            dim=1,
        )

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        batch_size, _, height, width = pixel_values.shape
        expected = self.grid_size * self.patch_size
        if not interpolate_pos_encoding and (height != expected or width != expected):
            raise ValueError(
                f"Input image size ({height}*{width}) doesn't match the model ({expected}*{expected}); "
                "pass interpolate_pos_encoding=True to run at another size."
            )
        embeddings = self.projection(pixel_values).flatten(2).transpose(1, 2)
        embeddings = torch.cat((self.cls_token.expand(batch_size, -1, -1), embeddings), dim=1)
        if interpolate_pos_encoding:
            embeddings = embeddings + self.interpolate_pos_encoding(height, width)
        else:
            embeddings = embeddings + self.position_embeddings
        return self.dropout(embeddings)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class ViTReducedAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (as timm), run by the attention interface."""

    def __init__(self, config: ViTReducedConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, seq_len, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch_size, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = self.proj(attn_output.reshape(batch_size, seq_len, -1))
        return attn_output, attn_weights


class ViTReducedMLP(nn.Module):
    """fc1 -> activation -> fc2, at the reduced hidden width."""

    def __init__(self, config: ViTReducedConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.mlp_hidden_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.mlp_hidden_size, config.hidden_size)
        # Initialized by the MLP as a whole (see ViTReducedPreTrainedModel._init_mlp), not as plain Linears.
        self.fc1.part_of_reduced_mlp = self.fc2.part_of_reduced_mlp = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class ViTReducedDropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        mask = hidden_states.new_empty((hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1))
        return hidden_states * mask.bernoulli_(keep_prob).div_(keep_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class ViTReducedLayer(GradientCheckpointingLayer):
    """Pre-norm block. The MLP is passed in, since under `grouped` several blocks use the same one."""

    def __init__(self, config: ViTReducedConfig, drop_path: float):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ViTReducedAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = ViTReducedDropPath(drop_path)

    def forward(self, hidden_states: torch.Tensor, mlp: ViTReducedMLP, **kwargs) -> torch.Tensor:
        attn_output, _ = self.attention(self.layernorm_before(hidden_states), **kwargs)
        hidden_states = hidden_states + self.drop_path(self.dropout(attn_output))
        mlp_output = mlp(self.layernorm_after(hidden_states))
        return hidden_states + self.drop_path(self.dropout(mlp_output))


class ViTReducedPreTrainedModel(PreTrainedModel):
    config: ViTReducedConfig
    config_class = ViTReducedConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = [
        "ViTReducedEmbeddings",
        "ViTReducedLayer",
        "ViTReducedMLP",
    ]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs: ClassVar[dict[str, type[nn.Module]]] = {
        "hidden_states": ViTReducedLayer,
        "attentions": ViTReducedAttention,
    }

    def __init__(self, config: ViTReducedConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        # Init draws from its own stream, seeded before any submodule exists: torch's construction-time init consumes
        # the global stream by weight size, which differs between strategies, and a shallow model must start from the
        # same draws as a baseline built with the same seed.
        self._init_generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), device="cpu")))

    def _draw(self, shape: tuple[int, ...], std: float) -> torch.Tensor:
        # timm's trunc_normal_(std=.02) truncates at +-2 absolute, i.e. not at all in practice.
        return nn.init.trunc_normal_(torch.empty(shape), std=std, a=-2.0, b=2.0, generator=self._init_generator)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """timm's ViT init; reductions are applied to full-width draws so they match the paper's code."""
        config = self.config
        std = config.initializer_range
        if isinstance(module, ViTReducedMLP):
            self._init_mlp(module)
        elif isinstance(module, nn.Linear) and not getattr(module, "part_of_reduced_mlp", False):
            init.copy_(module.weight, self._draw(tuple(module.weight.shape), std))
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # timm leaves the patch projection at PyTorch's default init.
            weight = torch.empty(module.weight.shape)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=self._init_generator)
            bound = 1 / math.sqrt(weight[0].numel())
            init.copy_(module.weight, weight)
            init.copy_(
                module.bias,
                torch.empty(module.bias.shape).uniform_(-bound, bound, generator=self._init_generator),
            )
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ViTReducedEmbeddings):
            init.copy_(
                module.position_embeddings,
                self._draw(tuple(module.position_embeddings.shape), std),
            )
            cls_token = torch.empty(module.cls_token.shape).normal_(std=1e-6, generator=self._init_generator)
            init.copy_(module.cls_token, cls_token)

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False):
        # Transformers skips remote-code modules without direct parameters (the MLP); our init goes through
        # transformers.initialization, which already leaves loaded tensors alone, so that shortcut is not needed.
        super()._initialize_weights(module, is_custom_code=False)

    def _init_mlp(self, mlp: ViTReducedMLP):
        config = self.config
        strategy = config.reduction_strategy
        full_width = config.mlp_hidden_size if strategy == "thin" else config.intermediate_size
        # Draw as the full model would: a grouped MLP consumes the draws of every block of its group, a shallow
        # one those of the full width, so each equals the first units of a same-seed baseline.
        draws = config.mlp_share_group_size if strategy == "grouped" else 1
        fc1, fc2 = [], []
        for _ in range(draws):
            fc1.append(self._draw((full_width, config.hidden_size), config.initializer_range))
            fc2.append(self._draw((config.hidden_size, full_width), config.initializer_range))
        width = config.mlp_hidden_size
        fc1_weight, fc2_weight = fc1[0][:width], fc2[0][:, :width]
        if strategy == "grouped":
            # fc1.bias is zero, so scaling it (as the reference code does) changes nothing; fc2.bias is not scaled.
            fc1_weight, fc2_weight = (
                fc1_weight * config.reduction_mlp_ratio,
                fc2_weight * config.reduction_mlp_ratio,
            )
        init.copy_(mlp.fc1.weight, fc1_weight)
        init.zeros_(mlp.fc1.bias)
        init.copy_(mlp.fc2.weight, fc2_weight)
        init.zeros_(mlp.fc2.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # register_for_auto_class records only the saved class; remote-code users need all three entry points.
        self.config.auto_map = dict(AUTO_MAP)
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`, but a checkpoint of another strategy or shape is an error.

        Transformers would otherwise load it partially: a plain checkpoint in a grouped model lets one block's
        MLP win silently. Only the classifier may be missing, extra or (with `ignore_mismatched_sizes`) resized.
        """
        _check_requested_architecture(pretrained_model_name_or_path, kwargs)
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
        )
        _check_loaded_keys(pretrained_model_name_or_path, loading_info)
        return (model, loading_info) if output_loading_info else model


def _check_requested_architecture(pretrained_model_name_or_path, kwargs):
    hub_kwargs = {
        key: kwargs[key]
        for key in (
            "cache_dir",
            "force_download",
            "local_files_only",
            "token",
            "revision",
            "subfolder",
        )
        if key in kwargs
    }
    saved, _ = ViTReducedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
    if saved.get("model_type") != ViTReducedConfig.model_type:
        raise ValueError(
            f"{pretrained_model_name_or_path} holds a {saved.get('model_type')!r} checkpoint, not 'vit_reduced'; "
            "convert it with hf_vit_reduction.convert instead."
        )
    checkpoint = ViTReducedConfig(**{k: v for k, v in saved.items() if k in ARCHITECTURE_FIELDS})
    requested = kwargs.get("config")
    if isinstance(requested, ViTReducedConfig):
        requested = {field: getattr(requested, field) for field in ARCHITECTURE_FIELDS}
    else:
        requested = {field: kwargs[field] for field in ARCHITECTURE_FIELDS if field in kwargs}
    differing = [
        f"{field}={value!r} but the checkpoint has {getattr(checkpoint, field)!r}"
        for field, value in requested.items()
        if value != getattr(checkpoint, field)
        and not (field == "reduction_strategy" and value is None and checkpoint.reduction_strategy == "baseline")
    ]
    if differing:
        raise ValueError(
            f"Cannot load {pretrained_model_name_or_path} as another architecture: {'; '.join(differing)}. "
            "Load it with its own config, or convert it with hf_vit_reduction.convert.reduce."
        )


def describe_key_problems(problems: dict[str, list[str]]) -> str:
    """'missing keys: a, b; unexpected keys: c' for the non-empty lists (four keys each at most); '' if none."""
    return "; ".join(f"{kind} keys: {', '.join(keys[:4])}" for kind, keys in problems.items() if keys)


def _check_loaded_keys(pretrained_model_name_or_path, loading_info):
    def outside_head(keys):
        return sorted(key for key in keys if not key.startswith("classifier."))

    problems = {
        "unexpected": outside_head(loading_info["unexpected_keys"]),
        "missing": outside_head(loading_info["missing_keys"]),
        "mismatched": outside_head(key for key, *_ in loading_info["mismatched_keys"]),
    }
    if details := describe_key_problems(problems):
        raise ValueError(f"The weights at {pretrained_model_name_or_path} do not fit this model ({details}).")


class ViTReducedModel(ViTReducedPreTrainedModel):
    """The encoder. Each unique MLP is held once in `mlps`; block i uses `mlps[config.mlp_index(i)]`."""

    _auto_class = "AutoModel"

    def __init__(self, config: ViTReducedConfig):
        super().__init__(config)
        self.embeddings = ViTReducedEmbeddings(config)
        depth = config.num_hidden_layers
        drop_path_rates = [config.drop_path_rate * index / max(depth - 1, 1) for index in range(depth)]
        self.layers = nn.ModuleList(ViTReducedLayer(config, rate) for rate in drop_path_rates)
        self.mlps = nn.ModuleList(ViTReducedMLP(config) for _ in range(config.num_unique_mlps))
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.projection

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        pixel_values = pixel_values.to(self.embeddings.projection.weight.dtype)
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        for index, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states, self.mlps[self.config.mlp_index(index)], **kwargs)
        return BaseModelOutput(last_hidden_state=self.layernorm(hidden_states))


class ViTReducedForImageClassification(ViTReducedPreTrainedModel):
    """ViTReduced with a linear classifier on the final CLS token, as timm's and Transformers' ViT."""

    _auto_class = "AutoModelForImageClassification"

    def __init__(self, config: ViTReducedConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = ViTReducedModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        outputs = self.vit(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        logits = self.classifier(outputs.last_hidden_state[:, 0])
        loss = self.loss_function(labels, logits, self.config, **kwargs) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "ViTReducedForImageClassification",
    "ViTReducedModel",
    "ViTReducedPreTrainedModel",
]
