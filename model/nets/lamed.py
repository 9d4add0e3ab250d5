"""LaMed, the Hugging Face way: a config holding every size and a causal-LM wrapper that splices
the projected CT features into the language model's input embeddings.

The wrapper takes any causal LM that `AutoModelForCausalLM.from_config` builds (Llama, Phi-3, ...),
so the same code builds the published 4B model and the tiny models the tests use. Splicing follows
M3D: the prompt is BOS + `<im_patch>` x N + " " + text and the N image features replace the
embeddings at positions 1..N. It happens only on a step that starts from an empty KV cache, so
`generate()` works unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import CausalLMOutputWithPast

from model.nets.encoders import FAMILIES, vision_encoder_from_config
from model.nets.findings import FindingTokens, select_asked
from model.nets.omnict.encoder import DEFAULT_ORGANS, SliceViT, omnict_token_counts
from model.nets.omnict.organs import OrganAggregation
from model.nets.vision import ViT3D, num_image_tokens


class LamedConfig(PreTrainedConfig):
    """Vision tower + projector sizes (M3D defaults) and the wrapped LM's config under `text_config`.

    `vision_family` "omnict" selects OmniCT's slice-volume encoder: `image_size` depth a multiple
    of 3, `patch_size` [3, K, K], `token_unshuffle` m, `position_dims` (depth, row, column sinusoid
    sizes), `organ_names` (masks from `model.ct.rois`) with `organ_tokens` tokens each; the
    mm_hidden_size / vision_* sizes then describe its 2D ViT, and the spp/pooling fields are unused."""

    model_type = "ctvqa_lamed"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    image_size: list[int] | tuple[int, ...] = (32, 256, 256)
    patch_size: list[int] | tuple[int, ...] = (4, 16, 16)
    image_channel: int = 1
    mm_hidden_size: int = 768
    vision_num_layers: int = 12
    vision_num_heads: int = 12
    vision_mlp_dim: int = 3072
    mm_projector_type: str = "spp"
    proj_layer_type: str = "mlp"
    proj_layer_num: int = 2
    proj_pooling_size: int = 2
    vision_family: str = "m3d"
    vision_stem_channels: int = 0  # M3D family: 0 = M3D's linear patch embedding, else a conv stem (vision.ConvStem)
    vision_stem_depth: int = 0  # 1: the conv stem goes two scales deeper before the tokens (vision.ConvStem)
    vision_finding_names: list[str] | tuple[str, ...] = ()  # findings the stem's map is read out for (nets.findings)
    vision_box_findings: list[str] | tuple[str, ...] = ()  # of those, the ones a box head locates (FindingBoxes)
    vision_box_context: int = 0  # 1: the box head's first layer reads each cell's 3x3x3 neighbourhood
    vision_box_refined: list[str] | tuple[str, ...] = ()  # of those, the ones a second look redraws (nets.refine)
    vision_finding_tokens: bool = False  # one image token per readout finding after the grid's (nets.findings)
    vision_finding_calibrated: bool = False  # readout logits through a per-finding scale and shift (nets.findings)
    vision_finding_asked: bool = False  # one image token after the grid's: the asked finding's (nets.findings)
    token_unshuffle: int = 2
    position_dims: list[int] | tuple[int, ...] = (32, 32, 32)
    organ_names: list[str] | tuple[str, ...] = DEFAULT_ORGANS
    organ_tokens: int = 8
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.image_size = [int(v) for v in self.image_size]
        self.patch_size = [int(v) for v in self.patch_size]
        self.position_dims = [int(v) for v in self.position_dims]
        self.organ_names = [str(v) for v in self.organ_names]
        # finding lists, each a subset of the one before it (a lone name would be read as its letters)
        within = None
        for field in ("vision_finding_names", "vision_box_findings", "vision_box_refined"):
            value = getattr(self, field)
            if isinstance(value, str):
                raise ValueError(f"{field} must be a list of finding names, got the string {value!r}")
            setattr(self, field, [str(v) for v in value])
            unknown = [n for n in getattr(self, field) if within is not None and n not in getattr(self, within)]
            if unknown:
                raise ValueError(f"{field} {unknown} are not in {within}")
            within = field
        if self.vision_finding_names and (self.vision_family != "m3d" or not self.vision_stem_channels):
            raise ValueError("vision_finding_names needs the M3D family with a convolutional stem "
                             f"(vision_stem_channels > 0), got {self.vision_family!r} with {self.vision_stem_channels}")
        if self.vision_finding_tokens and not self.vision_finding_names:
            raise ValueError("vision_finding_tokens needs vision_finding_names (one token per finding)")
        if self.vision_finding_calibrated and not self.vision_finding_names:
            raise ValueError("vision_finding_calibrated needs vision_finding_names (the findings it calibrates)")
        if self.vision_finding_asked and (not self.vision_finding_names or self.vision_finding_tokens):
            raise ValueError("vision_finding_asked needs vision_finding_names and excludes vision_finding_tokens")
        if self.vision_family not in FAMILIES:
            raise ValueError(f"vision_family must be one of {FAMILIES}, got {self.vision_family!r}")
        if self.image_channel != 1:
            raise ValueError(f"CT input has one channel, config says image_channel={self.image_channel}")
        if self.vision_family == "omnict":
            if len(self.position_dims) != 3 or any(d <= 0 or d % 2 for d in self.position_dims):
                raise ValueError(f"position_dims must be three even sizes, got {self.position_dims}")
            if len(set(self.organ_names)) != len(self.organ_names) or self.organ_tokens < 1:
                raise ValueError(f"organ_names must be distinct and organ_tokens >= 1, got {self.organ_names}, "
                                 f"{self.organ_tokens}")
            self._omnict_counts()  # validates the geometry
            return
        if self.mm_projector_type != "spp" or self.proj_layer_type != "mlp":
            raise ValueError(
                f"only the spatial pooling projector with an MLP is supported, got mm_projector_type="
                f"{self.mm_projector_type!r}, proj_layer_type={self.proj_layer_type!r}"
            )
        num_image_tokens(self.image_size, self.patch_size, self.proj_pooling_size)  # validates the geometry

    @property
    def num_image_tokens(self) -> int:
        """The number of `<im_patch>` placeholders a prompt about a whole volume needs (global
        tokens plus, for OmniCT, the organ tokens)."""
        if self.vision_family == "omnict":
            return self._omnict_counts()[0]
        extra = len(self.vision_finding_names) if self.vision_finding_tokens else int(self.vision_finding_asked)
        return num_image_tokens(self.image_size, self.patch_size, self.proj_pooling_size) + extra

    @property
    def num_slice_tokens(self) -> int | None:
        """Placeholders of a prompt about one axial slice; None when the family takes volumes only."""
        return self._omnict_counts()[1] if self.vision_family == "omnict" else None

    def _omnict_counts(self) -> tuple[int, int]:
        return omnict_token_counts(self.image_size, self.patch_size, self.token_unshuffle,
                                   len(self.organ_names), self.organ_tokens)


class LamedForCausalLM(PreTrainedModel, GenerationMixin):
    """Vision encoder (`vision.vision_tower`, `vision.mm_projector`) + any HF causal LM (`language_model`)."""

    config: LamedConfig
    config_class = LamedConfig
    base_model_prefix = "lamed"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _skip_keys_device_placement = ["past_key_values"]
    _no_split_modules = ["TransformerBlock"]

    def __init__(self, config: LamedConfig) -> None:
        super().__init__(config)
        self.vision = vision_encoder_from_config(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ViT3D):
            std = self.config.initializer_range
            with torch.no_grad():
                module.cls_token.normal_(0.0, std)
                module.patch_embedding.position_embeddings.normal_(0.0, std)
        elif isinstance(module, (SliceViT, OrganAggregation, FindingTokens)):
            module.init_parameters(self.config.initializer_range)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    @property
    def num_image_tokens(self) -> int:
        """Image tokens of a whole-volume prompt (a slice prompt may need fewer: config.num_slice_tokens)."""
        return self.vision.num_tokens

    @property
    def supports_slices(self) -> bool:
        """Whether the encoder answers about one axial slice (input (B, 1, 1, H, W))."""
        return self.config.vision_family == "omnict"

    def encode_images(self, images: torch.Tensor, organ_masks: torch.Tensor | None = None) -> torch.Tensor:
        """(B,1,D,H,W) in [0,1] (OmniCT also (B,1,1,H,W), one slice) to (B, tokens, LM hidden), in
        the LM's dtype; `organ_masks` (B, organs, D, H, W) on the same grid feed OmniCT's organ tokens."""
        weight = next(self.vision.parameters())
        images = images.to(device=weight.device, dtype=weight.dtype)
        if self.supports_slices:
            features = self.vision(images, organ_masks)
        elif organ_masks is not None:
            raise ValueError("organ masks were given, but this model's encoder (M3D family) has no organ tokens")
        else:
            features = self.vision(images)
        return features.to(self.get_input_embeddings().weight.dtype)

    def encode_images_and_boxes(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, tuple[float, ...]]]:
        """`encode_images` of one whole-scan input (1,1,D,H,W) and, from the same pass of the
        tower, the box head's box (0-1 over the input) of every finding it locates, by name
        (empty without a head)."""
        if self.supports_slices or not hasattr(self.vision, "encode_and_locate"):
            return self.encode_images(images), {}
        weight = next(self.vision.parameters())
        features, located = self.vision.encode_and_locate(images.to(device=weight.device, dtype=weight.dtype))
        names = list(self.config.vision_finding_names)
        return features.to(self.get_input_embeddings().weight.dtype), {names[k]: box for k, box in located.items()}

    def select_asked(self, features: torch.Tensor, findings: Sequence[str | None]) -> torch.Tensor:
        """`encode_images` output to what a prompt takes, per row the token of the finding its
        question names (`model.evaluation.findings.finding_asked`; None or a finding the readout
        does not read: the "none" token). Unchanged without an asked-finding readout."""
        if not self.config.vision_finding_asked:
            return features
        names = list(self.config.vision_finding_names)
        return select_asked(features, [names.index(f) if f in names else None for f in findings], len(names))

    def splice_image_features(self, inputs_embeds: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """Replace the embeddings at positions 1..N with the image features (position 0 stays BOS)."""
        n = image_features.shape[1]
        if inputs_embeds.shape[1] < n + 1:
            raise ValueError(
                f"the prompt has {inputs_embeds.shape[1]} tokens but needs BOS + {n} image tokens before the text"
            )
        if image_features.shape[0] == 1 and inputs_embeds.shape[0] > 1:
            image_features = image_features.expand(inputs_embeds.shape[0], -1, -1)
        elif image_features.shape[0] != inputs_embeds.shape[0]:
            raise ValueError(
                f"{image_features.shape[0]} image feature sets for a batch of {inputs_embeds.shape[0]} prompts"
            )
        image_features = image_features.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype)
        return torch.cat((inputs_embeds[:, :1], image_features, inputs_embeds[:, n + 1 :]), dim=1)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        images: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        organ_masks: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        asked_findings: Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """`images` (B,1,D,H,W) or pre-encoded `image_features` (B,N,H) are spliced on a fresh-cache
        step only; `asked_findings`, the finding each row's question names (`select_asked`)."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.get_input_embeddings()(input_ids)
            fresh = past_key_values is None or past_key_values.get_seq_length() == 0
            if fresh and (images is not None or image_features is not None):
                if image_features is None:
                    image_features = self.encode_images(images, organ_masks)
                if self.config.vision_finding_asked and image_features.shape[1] != self.num_image_tokens:
                    # the encoder's every finding token: keep the one each row's question names
                    # (`asked_findings`; not given: "none")
                    image_features = self.select_asked(image_features, asked_findings or [None] * len(image_features))
                inputs_embeds = self.splice_image_features(inputs_embeds, image_features)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


AutoConfig.register(LamedConfig.model_type, LamedConfig, exist_ok=True)
AutoModelForCausalLM.register(LamedConfig, LamedForCausalLM, exist_ok=True)
