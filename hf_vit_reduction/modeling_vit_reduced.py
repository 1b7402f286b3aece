"""PyTorch ViTReduced: ViT whose MLPs are reduced by sharing (grouped) or width (shallow, thin).

Self-contained (torch, transformers and this folder only) so that it runs as Hub remote code.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_vit_reduced import ViTReducedConfig
from .loading_vit_reduced import check_loaded_keys, check_requested_architecture, without_repeated_shared_tensors

AUTO_MAP = {
    "AutoConfig": "configuration_vit_reduced.ViTReducedConfig",
    "AutoModel": "modeling_vit_reduced.ViTReducedModel",
    "AutoModelForImageClassification": "modeling_vit_reduced.ViTReducedForImageClassification",
}


class ViTReducedEmbeddings(nn.Module):
    """Patch embedding, the prefix tokens (class, distillation, registers: those the config asks for, in timm's
    order) and the learned position embedding (on the patches only under `no_embed_class`)."""

    def __init__(self, config: ViTReducedConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.grid_size = config.image_size // config.patch_size
        self.no_embed_class = config.no_embed_class
        # Prefix tokens that have rows in the position embedding.
        self.num_embedded_prefix_tokens = 0 if config.no_embed_class else config.num_prefix_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.class_token else None
        self.distillation_token = (
            nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.distillation_token else None
        )
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, config.num_register_tokens, config.hidden_size))
            if config.num_register_tokens
            else None
        )
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_positions, config.hidden_size))
        self.projection = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Bicubic resize of the patch position embeddings to another input resolution (prefix rows kept)."""
        dim, prefix = self.position_embeddings.shape[-1], self.num_embedded_prefix_tokens
        grid = self.position_embeddings[:, prefix:].reshape(1, self.grid_size, self.grid_size, dim).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(
            grid,
            size=(height // self.patch_size, width // self.patch_size),
            mode="bicubic",
            align_corners=False,
        )
        return torch.cat(
            (
                self.position_embeddings[:, :prefix],
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
        positions = (
            self.interpolate_pos_encoding(height, width) if interpolate_pos_encoding else self.position_embeddings
        )
        prefix = [
            token.expand(batch_size, -1, -1)
            for token in (self.cls_token, self.distillation_token, self.register_tokens)
            if token is not None
        ]
        if self.no_embed_class:
            embeddings = torch.cat((*prefix, embeddings + positions), dim=1)
        else:
            embeddings = torch.cat((*prefix, embeddings), dim=1) + positions
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

    def forward(
        self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
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
        # Initialized by the block that holds the MLP (see ViTReducedPreTrainedModel._init_mlp), not as plain Linears.
        self.fc1.part_of_reduced_mlp = self.fc2.part_of_reduced_mlp = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class ViTReducedLayerScale(nn.Module):
    """LayerScale: a learned per-channel scale of a residual branch (DeiT III, DINOv2)."""

    def __init__(self, config: ViTReducedConfig):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(config.hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.gamma


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
    """Pre-norm block. Under `grouped`, the blocks of a group hold one and the same `mlp` module; LayerScale's
    scales belong to the block, so they are never shared."""

    def __init__(self, config: ViTReducedConfig, layer_idx: int, drop_path: float, mlp: ViTReducedMLP):
        super().__init__()
        self.layer_idx = layer_idx
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ViTReducedAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = mlp
        has_layer_scale = config.layer_scale_init_value is not None
        self.layer_scale1 = ViTReducedLayerScale(config) if has_layer_scale else nn.Identity()
        self.layer_scale2 = ViTReducedLayerScale(config) if has_layer_scale else nn.Identity()
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = ViTReducedDropPath(drop_path)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        attn_output, _ = self.attention(self.layernorm_before(hidden_states), **kwargs)
        hidden_states = hidden_states + self.drop_path(self.layer_scale1(self.dropout(attn_output)))
        mlp_output = self.mlp(self.layernorm_after(hidden_states))
        return hidden_states + self.drop_path(self.layer_scale2(self.dropout(mlp_output)))


class ViTReducedAttentionPool(nn.Module):
    """Multi-head attention pooling (MAP, as timm's `AttentionPoolLatent` and SigLIP): one learned query attends to
    the tokens, then a residual MLP of the unreduced width. Its MLP is the head's, not a block's: named `ffn_*`."""

    def __init__(self, config: ViTReducedConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.q = nn.Linear(config.hidden_size, config.hidden_size)
        self.kv = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn_fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.ffn_fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, width = hidden_states.shape
        query = self.q(self.latent.expand(batch_size, -1, -1)).view(batch_size, 1, self.num_heads, self.head_dim)
        kv = self.kv(hidden_states).view(batch_size, seq_len, 2, self.num_heads, self.head_dim)
        key, value = kv.permute(2, 0, 3, 1, 4).unbind(0)
        pooled = nn.functional.scaled_dot_product_attention(query.transpose(1, 2), key, value)
        pooled = self.proj(pooled.transpose(1, 2).reshape(batch_size, width))
        return pooled + self.ffn_fc2(self.activation_fn(self.ffn_fc1(self.norm(pooled))))


class ViTReducedPreTrainedModel(PreTrainedModel):
    config: ViTReducedConfig
    config_class = ViTReducedConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["ViTReducedEmbeddings", "ViTReducedLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs: ClassVar[dict[str, type[nn.Module]]] = {
        "hidden_states": ViTReducedLayer,
        "attentions": ViTReducedAttention,
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """timm's ViT init, drawn from the global RNG; reductions are applied to full-width draws as in the paper."""
        std = self.config.initializer_range
        if isinstance(module, ViTReducedLayer):
            self._init_mlp(module)
        elif isinstance(module, nn.Linear) and not getattr(module, "part_of_reduced_mlp", False):
            # timm's trunc_normal_(std=.02) truncates at +-2 absolute, i.e. not at all in practice.
            init.trunc_normal_(module.weight, std=std, a=-2.0, b=2.0)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # timm leaves the patch projection at PyTorch's default init.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.weight[0].numel())
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ViTReducedEmbeddings):
            # timm's draws: an option that is off draws nothing, so a plain ViT's init is unchanged.
            init.trunc_normal_(module.position_embeddings, std=std, a=-2.0, b=2.0)
            if module.cls_token is not None:
                init.normal_(module.cls_token, std=1e-6)
            if module.distillation_token is not None:
                init.trunc_normal_(module.distillation_token, std=std, a=-2.0, b=2.0)
            if module.register_tokens is not None:
                init.normal_(module.register_tokens, std=1e-6)
        elif isinstance(module, ViTReducedLayerScale):
            init.constant_(module.gamma, self.config.layer_scale_init_value)
        elif isinstance(module, ViTReducedAttentionPool):
            # timm's trunc_normal_tf_: truncated at two standard deviations.
            latent_std = module.latent.shape[-1] ** -0.5
            init.trunc_normal_(module.latent, std=latent_std, a=-2 * latent_std, b=2 * latent_std)

    def _init_mlp(self, layer: ViTReducedLayer):
        config = self.config
        strategy = config.reduction_strategy
        # Every block draws a full-width MLP, as a baseline block would, so that the global RNG advances alike under
        # every strategy (but thin, trained from scratch at its width): a shallow MLP is then the first units of a
        # same-seed baseline's, and a grouped MLP its group leader's, which writes it; the other blocks of the group
        # draw and discard.
        full_width = config.mlp_hidden_size if strategy == "thin" else config.intermediate_size
        fc1_weight = nn.init.trunc_normal_(
            torch.empty(full_width, config.hidden_size), std=config.initializer_range, a=-2.0, b=2.0
        )
        fc2_weight = nn.init.trunc_normal_(
            torch.empty(config.hidden_size, full_width), std=config.initializer_range, a=-2.0, b=2.0
        )
        if config.first_block_of_mlp(layer.layer_idx) == layer.layer_idx:
            width = config.mlp_hidden_size
            fc1_weight, fc2_weight = fc1_weight[:width], fc2_weight[:, :width]
            if strategy == "grouped":
                # fc1.bias is zero, so scaling it (as the reference code does) changes nothing; fc2.bias is not scaled.
                fc1_weight, fc2_weight = (
                    fc1_weight * config.reduction_mlp_ratio,
                    fc2_weight * config.reduction_mlp_ratio,
                )
            init.copy_(layer.mlp.fc1.weight, fc1_weight)
            init.zeros_(layer.mlp.fc1.bias)
            init.copy_(layer.mlp.fc2.weight, fc2_weight)
            init.zeros_(layer.mlp.fc2.bias)

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False):
        # Transformers skips remote-code modules without direct parameters (the block's MLP init lives on the block);
        # our init goes through transformers.initialization, which already leaves loaded tensors alone.
        super()._initialize_weights(module, is_custom_code=False)

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)
        # Transformers expands `_tied_weights_keys` only under `config.tie_word_embeddings`; a grouped model's keys are
        # already expanded and always tied.
        return dict(self._tied_weights_keys or {})

    def mark_tied_weights_as_initialized(self, loading_info):
        # Transformers flags the parameters of tied keys as initialized, since tying overwrites them. A grouped model's
        # tied keys name its shared modules' parameters, which are the first block's: flagging them would leave them
        # uninitialized (on the meta device) when the checkpoint lacks them, as with `state_dict={}`. A tied key that
        # the checkpoint does hold is a separate MLP loaded over the shared one, and is reported as unexpected.
        loading_info.unexpected_keys.update(self.all_tied_weights_keys.keys() - loading_info.missing_keys)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # register_for_auto_class records only the saved class; remote-code users need all three entry points.
        self.config.auto_map = dict(AUTO_MAP)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def at_image_size(self, image_size: int) -> "ViTReducedPreTrainedModel":
        """This model for another input size (to fine-tune or predict there): the position embeddings resized as
        `interpolate_pos_encoding` does (bicubic over the patch grid, the CLS token's kept), all else unchanged."""
        patch_size = self.config.patch_size
        if image_size % patch_size:
            raise ValueError(
                f"image_size={image_size} is not valid for {self.name_or_path}: allowed: a multiple of its patch "
                f"size {patch_size} (it was trained at {self.config.image_size})"
            )
        weights = self.state_dict()
        prefix = "" if self.base_model is self else f"{self.base_model_prefix}."
        weights[f"{prefix}embeddings.position_embeddings"] = self.base_model.embeddings.interpolate_pos_encoding(
            image_size, image_size
        ).detach()
        resized = type(self)(type(self.config).from_dict({**self.config.to_dict(), "image_size": image_size}))
        resized.load_state_dict(weights)
        return resized

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`, but a checkpoint of another strategy or shape is an error.

        Transformers would otherwise load it partially: a plain checkpoint in a grouped model lets one block's MLP win
        silently. Only the classifier may be missing, extra or (with `ignore_mismatched_sizes`) resized. With
        `output_loading_info=True` the problems are logged instead and the caller inspects the loading info. See
        `loading_vit_reduced` for the whole contract.
        """
        check_requested_architecture(cls.config_class, pretrained_model_name_or_path, kwargs)
        if kwargs.get("state_dict"):
            kwargs["state_dict"] = without_repeated_shared_tensors(kwargs["state_dict"], kwargs.get("config"))
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
        )
        check_loaded_keys(
            model,
            pretrained_model_name_or_path,
            loading_info,
            state_dict=kwargs.get("state_dict"),
            raise_error=not output_loading_info,
        )
        return (model, loading_info) if output_loading_info else model


class ViTReducedModel(ViTReducedPreTrainedModel):
    """The encoder and its pooling. Block i owns `layers[i].mlp`; under `grouped` the blocks of a group hold the same
    MLP module. `pooler_output` is what the classifier reads: the pooled features after the final norm."""

    _auto_class = "AutoModel"

    def __init__(self, config: ViTReducedConfig):
        super().__init__(config)
        depth = config.num_hidden_layers
        drop_path_rates = [config.drop_path_rate * index / max(depth - 1, 1) for index in range(depth)]
        # torch initializes each module as it is built, from the global RNG and by weight size, which differs between
        # strategies; _init_weights replaces all of it, so building leaves the RNG to the init.
        with torch.random.fork_rng(devices=[]):
            self.embeddings = ViTReducedEmbeddings(config)
            self.pre_layernorm = (
                nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.pre_norm else nn.Identity()
            )
            mlps = [ViTReducedMLP(config) for _ in range(config.num_unique_mlps)]
            self.layers = nn.ModuleList(
                ViTReducedLayer(config, index, rate, mlps[config.mlp_index(index)])
                for index, rate in enumerate(drop_path_rates)
            )
            self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.attention_pool = ViTReducedAttentionPool(config) if config.pooling == "map" else None
        # A shared MLP is saved once, under its first block; the others are tied to it on load.
        self._tied_weights_keys = {
            f"layers.{index}.mlp.{name}": f"layers.{config.first_block_of_mlp(index)}.mlp.{name}"
            for index in range(depth)
            if config.first_block_of_mlp(index) != index
            for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
        }
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.projection

    def set_input_embeddings(self, value: nn.Module):
        self.embeddings.projection = value

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        pixel_values = pixel_values.to(self.embeddings.projection.weight.dtype)
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        hidden_states = self.pre_layernorm(hidden_states)
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        fc_norm = self.config.fc_norm
        sequence_output = hidden_states if fc_norm else self.layernorm(hidden_states)
        pooled_output = self.pool(sequence_output)
        # As timm's forward_head: the pooled features after the final norm, what the classifier reads.
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=self.layernorm(pooled_output) if fc_norm else pooled_output,
        )

    def pool(self, sequence_output: torch.Tensor) -> torch.Tensor:
        """The class token, the mean of the patch tokens, or their attention pooling (`config.pooling`)."""
        if self.config.pooling == "token":
            return sequence_output[:, 0]
        patches = sequence_output[:, self.config.num_prefix_tokens :]
        return patches.mean(dim=1) if self.config.pooling == "avg" else self.attention_pool(patches)


@dataclass
class ViTReducedImageClassifierOutput(ImageClassifierOutput):
    r"""
    cls_logits (`torch.FloatTensor`, *optional*):
        With a distillation token: the class head's logits (trained on the labels).
    distillation_logits (`torch.FloatTensor`, *optional*):
        With a distillation token: the distillation head's logits (trained on the teacher's predictions). `logits`
        is the mean of the two, as DeiT predicts.
    """

    cls_logits: torch.FloatTensor | None = None
    distillation_logits: torch.FloatTensor | None = None


class ViTReducedForImageClassification(ViTReducedPreTrainedModel):
    """ViTReduced with a linear classifier on the pooled features, as timm's ViT; with a distillation token, a second
    classifier on that token and the two averaged, as DeiT."""

    _auto_class = "AutoModelForImageClassification"

    def __init__(self, config: ViTReducedConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = ViTReducedModel(config)
        # As in ViTReducedModel: the init, not the building, draws from the RNG.
        with torch.random.fork_rng(devices=[]):
            self.classifier = (
                nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
            )
            self.distillation_classifier = (
                (nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity())
                if config.distillation_token
                else None
            )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ViTReducedImageClassifierOutput:
        outputs = self.vit(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        logits = cls_logits = self.classifier(outputs.pooler_output)
        distillation_logits = None
        if self.distillation_classifier is not None:
            distillation_logits = self.distillation_classifier(outputs.last_hidden_state[:, 1])
            logits = (cls_logits + distillation_logits) / 2
        loss = self.loss_function(labels, logits, self.config, **kwargs) if labels is not None else None
        return ViTReducedImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cls_logits=None if distillation_logits is None else cls_logits,
            distillation_logits=distillation_logits,
        )


__all__ = [
    "ViTReducedForImageClassification",
    "ViTReducedModel",
    "ViTReducedPreTrainedModel",
]
