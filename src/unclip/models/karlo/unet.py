"""Karlo's decoder and super-resolution UNets and its text projection, free of diffusers.

Kakao Brain's Karlo (diffusers ``UnCLIPPipeline``, "kakaobrain/karlo-v1-alpha") runs three networks
after the prior: a text projection that turns the CLIP image embedding, the pooled CLIP text
embedding and the CLIP text tokens into the decoder's context tokens and additive embedding
[unCLIP §2.1]; a 64 px decoder UNet (diffusers ``UNet2DConditionModel``) that attends to those
tokens; and two 64 -> 256 super-resolution UNets (diffusers ``UNet2DModel``; one for all steps but
the last, one for the last). This module re-implements exactly the variants Karlo uses, with
configs read from the diffusers ``config.json`` files and explicit key tables for the weights::

    cfg = KarloUNetConfig.from_diffusers(json.load(open("decoder/config.json")))
    net = load_mapped(KarloUNet(cfg), safetensors.torch.load_file(path), UNET_KEYS, "decoder")

Numerics follow diffusers 0.42 in fp32 (see ``tests/test_karlo_unet.py``). Two details that are
easy to get wrong: the attention group norms of the decoder use eps 1e-5 whatever ``norm_eps`` says,
and the four CLIP context tokens come out of one linear layer laid out channel-major (token index
fastest), a leftover of the original Conv1d-style layout.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from unclip.config import Config, ConfigError
from unclip.errors import UserError
from unclip.models.karlo.blocks import (
    DownLevel,
    KarloAttention,
    MidLevel,
    ResBlock,
    UpLevel,
    sinusoidal_features,
)
from unclip.nn.norms import GroupNorm32

DownBlockType = Literal["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"]
UpBlockType = Literal["ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D"]
MidBlockType = Literal["UNetMidBlock2DSimpleCrossAttn", "UNetMidBlock2D"]

_CROSS_BLOCKS = ("SimpleCrossAttnDownBlock2D", "SimpleCrossAttnUpBlock2D", "UNetMidBlock2DSimpleCrossAttn")
# diffusers builds the decoder's attention GroupNorms with ``Attention``'s own default epsilon.
_CROSS_ATTENTION_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class KarloUNetConfig(Config):
    """Architecture of a Karlo UNet; field names and meanings follow diffusers' config.

    The defaults are Karlo's 64 px decoder; :meth:`karlo_super_res` gives the 64 -> 256 networks.

    Attributes:
        in_channels: C_in (3 for the decoder; 6 for super-resolution: noisy image + upsampled
            low-res image).
        out_channels: C_out (6 = eps and variance interpolation for the decoder, 3 for super-res).
        block_out_channels: width per resolution level.
        layers_per_block: residual blocks per level on the way down (one more on the way up).
        down_block_types / up_block_types: per level, with or without cross attention (up blocks
            listed from the lowest resolution).
        mid_block_type: "UNetMidBlock2DSimpleCrossAttn" (res, cross attention, res) or
            "UNetMidBlock2D" (res, optional self-attention, res: ``UNet2DModel``'s mid block).
        mid_attention: self-attention in a "UNetMidBlock2D" mid block (diffusers ``add_attention``).
        mid_attention_norm_groups: groups of that attention's GroupNorm, None for none (diffusers
            resolves ``attn_norm_num_groups`` to this; see :meth:`from_diffusers`).
        attention_head_dim: channels per attention head (diffusers' misnamed field); None means
            one head per layer.
        cross_attention_dim: width of the context tokens; None for networks without cross
            attention.
        norm_num_groups: GroupNorm groups of the residual blocks and output norm.
        norm_eps: their epsilon.
        resnet_time_scale_shift: how residual blocks take the embedding: "scale_shift" (FiLM
            after the norm) or "default" (added before the norm).
        extra_emb: the forward pass takes an embedding added to the time embedding (diffusers
            ``class_embed_type="identity"``: the decoder's additive CLIP embedding).
        flip_sin_to_cos: sinusoidal timestep features with the cos half first.
        freq_shift: frequency shift of the sinusoidal features.
        time_embedding_dim: width of the time embedding; None means 4 * block_out_channels[0].
        dropout: dropout in the residual blocks (training only).
        sample_size: the image side the network was trained at (other multiples of the
            down-sampling factor also run).
    """

    in_channels: int = 3
    out_channels: int = 6
    block_out_channels: tuple[int, ...] = (320, 640, 960, 1280)
    layers_per_block: int = 3
    down_block_types: tuple[DownBlockType, ...] = (
        "ResnetDownsampleBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
    )
    up_block_types: tuple[UpBlockType, ...] = (
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "ResnetUpsampleBlock2D",
    )
    mid_block_type: MidBlockType = "UNetMidBlock2DSimpleCrossAttn"
    mid_attention: bool = False
    mid_attention_norm_groups: int | None = None
    attention_head_dim: int | None = 64
    cross_attention_dim: int | None = 1536
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    resnet_time_scale_shift: Literal["default", "scale_shift"] = "scale_shift"
    extra_emb: bool = True
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    time_embedding_dim: int | None = None
    dropout: float = 0.0
    sample_size: int | None = 64

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        if n == 0 or any(c <= 0 for c in self.block_out_channels):
            raise ValueError(
                f"block_out_channels must be positive and non-empty, got {self.block_out_channels}"
            )
        for name in ("down_block_types", "up_block_types"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} needs one entry per block_out_channels entry ({n})")
        allowed = {"down_block_types": get_args(DownBlockType), "up_block_types": get_args(UpBlockType)}
        for name, ok in allowed.items():
            bad = [b for b in getattr(self, name) if b not in ok]
            if bad:
                raise ValueError(f"{name}: {bad[0]!r} is not supported (supported: {', '.join(ok)})")
        if self.mid_block_type not in get_args(MidBlockType):
            raise ValueError(f"mid_block_type {self.mid_block_type!r} is not supported")
        if self.resnet_time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(f"resnet_time_scale_shift {self.resnet_time_scale_shift!r} is not supported")
        if self.layers_per_block <= 0:
            raise ValueError(f"layers_per_block must be positive, got {self.layers_per_block}")
        bad_groups = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if self.norm_num_groups <= 0 or bad_groups:
            raise ValueError(f"block_out_channels {bad_groups} are not divisible by norm_num_groups")
        if self.mid_attention and self.mid_block_type != "UNetMidBlock2D":
            raise ValueError("mid_attention applies to mid_block_type 'UNetMidBlock2D' only")
        groups = self.mid_attention_norm_groups
        if groups is not None and (groups <= 0 or self.block_out_channels[-1] % groups):
            raise ValueError(
                f"mid_attention_norm_groups {groups} does not divide {self.block_out_channels[-1]}"
            )
        if self.has_cross_attention != (self.cross_attention_dim is not None):
            raise ValueError("cross_attention_dim must be set exactly when a block has cross attention")
        if self.has_cross_attention and self.attention_head_dim is None:
            raise ValueError("cross-attention blocks need attention_head_dim")
        if self.attention_head_dim is not None:
            widths = [
                c
                for c, d, u in zip(self.block_out_channels, self.down_block_types, self.up_block_types[::-1])
                if d in _CROSS_BLOCKS or u in _CROSS_BLOCKS
            ]
            if self.has_mid_attention:
                widths.append(self.block_out_channels[-1])
            bad = [c for c in widths if c % self.attention_head_dim]
            if bad:
                raise ValueError(f"attention widths {bad} are not divisible by attention_head_dim")
        if self.half_time_dim - self.freq_shift == 0:
            raise ValueError("freq_shift must differ from block_out_channels[0] // 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.sample_size is not None and self.sample_size % self.downsample_factor:
            raise ValueError(f"sample_size {self.sample_size} is not a multiple of {self.downsample_factor}")

    @property
    def has_cross_attention(self) -> bool:
        kinds = (*self.down_block_types, *self.up_block_types, self.mid_block_type)
        return any(k in _CROSS_BLOCKS for k in kinds)

    @property
    def has_mid_attention(self) -> bool:
        return self.mid_block_type == "UNetMidBlock2DSimpleCrossAttn" or self.mid_attention

    @property
    def half_time_dim(self) -> int:
        return self.block_out_channels[0] // 2

    @property
    def time_embed_dim(self) -> int:
        """E, the width of the time embedding (and of ``extra_emb``)."""
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @property
    def downsample_factor(self) -> int:
        """Input sides must be multiples of this."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def karlo_super_res(cls) -> KarloUNetConfig:
        """Karlo's 64 -> 256 super-resolution networks (``super_res_first`` and ``super_res_last``).

        Karlo's original ``SuperResUNetModel`` leaves ``use_scale_shift_norm`` off, and the
        diffusers conversion config does not set ``resnet_time_scale_shift``, so the embedding is
        added before the norm ("default").
        """
        return cls(
            in_channels=6,
            out_channels=3,
            down_block_types=("ResnetDownsampleBlock2D",) * 4,
            up_block_types=("ResnetUpsampleBlock2D",) * 4,
            mid_block_type="UNetMidBlock2D",
            attention_head_dim=None,
            cross_attention_dim=None,
            resnet_time_scale_shift="default",
            extra_emb=False,
            sample_size=256,
        )

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> KarloUNetConfig:
        """Read a diffusers ``UNet2DConditionModel`` / ``UNet2DModel`` ``config.json`` dict.

        Bookkeeping keys (``_class_name``, ``_diffusers_version``, ...) are ignored, so are
        fields that only matter for block types we reject anyway; fields missing from the dict
        take diffusers' defaults for that class.

        Raises:
            UserError: a field with a value these networks do not support, or an unknown field.
        """
        return _unet_config_from_diffusers(cls, config)


# diffusers 0.42 constructor defaults of the fields we read, per class.
_COMMON_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "resnet_time_scale_shift": "default",
    "class_embed_type": None,
    "time_embedding_dim": None,
    "dropout": 0.0,
    "attention_head_dim": 8,
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "UNet2DConditionModel": {
        **_COMMON_DEFAULTS,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": 1280,
    },
    "UNet2DModel": {
        **_COMMON_DEFAULTS,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (224, 448, 672, 896),
        "down_block_types": ("DownBlock2D",) + ("AttnDownBlock2D",) * 3,
        "up_block_types": ("AttnUpBlock2D",) * 3 + ("UpBlock2D",),
        "mid_block_type": "UNetMidBlock2D",
        "add_attention": True,
        "attn_norm_num_groups": None,
    },
}
# Fields that change the network in ways Karlo never uses: the only values accepted.
_FIXED: dict[str, tuple[Any, ...]] = {
    "act_fn": ("silu", "swish"),
    "center_input_sample": (False,),
    "time_embedding_type": ("positional",),
    "mid_block_scale_factor": (1,),
    "resnet_out_scale_factor": (1,),
    "resnet_skip_time_act": (False,),
    "only_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "cross_attention_norm": (None,),
    "num_attention_heads": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "addition_embed_type": (None,),
    "num_class_embeds": (None,),
    "class_embeddings_concat": (False,),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "attention_type": ("default",),
}
# Fields read only by block types or options rejected above (conv resampling, transformer
# blocks, learned / projected embeddings): any value builds the same network.
_IRRELEVANT = {
    "downsample_padding",
    "downsample_type",
    "upsample_type",
    "transformer_layers_per_block",
    "reverse_transformer_layers_per_block",
    "use_linear_projection",
    "dual_cross_attention",
    "upcast_attention",
    "addition_time_embed_dim",
    "addition_embed_type_num_heads",
    "projection_class_embeddings_input_dim",
    "num_train_timesteps",
}


# Fields diffusers also accepts as one value per level (or per side); we need one value.
_PER_LEVEL = (
    "layers_per_block",
    "attention_head_dim",
    "cross_attention_dim",
    "only_cross_attention",
    "sample_size",
)


def _uniform(kind: str, name: str, value: Any) -> Any:
    if name in _PER_LEVEL and isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UserError(
                f"diffusers {kind} config field {name}={list(value)!r} is not supported (needs one value)"
            )
        return value[0]
    return value


def _unet_config_from_diffusers(cls: type[KarloUNetConfig], config: dict[str, Any]) -> KarloUNetConfig:
    kind = config.get("_class_name") or (
        "UNet2DConditionModel" if "cross_attention_dim" in config else "UNet2DModel"
    )
    if kind not in _DEFAULTS:
        raise UserError(
            f"diffusers config _class_name={kind!r} is not a Karlo UNet (UNet2DConditionModel or UNet2DModel)"
        )
    src = {**_DEFAULTS[kind], **{k: v for k, v in config.items() if not k.startswith("_")}}
    src = {k: _uniform(kind, k, v) for k, v in src.items()}

    def unsupported(name: str) -> UserError:
        return UserError(f"diffusers {kind} config field {name}={src[name]!r} is not supported for Karlo")

    used = set(_DEFAULTS[kind]) | set(_FIXED) | _IRRELEVANT
    for name in src:
        if name not in used:
            raise UserError(f"diffusers {kind} config field {name!r} is unknown to the Karlo converter")
        if name in _FIXED and src[name] not in _FIXED[name]:
            raise unsupported(name)
    if src["class_embed_type"] not in (None, "identity"):
        raise unsupported("class_embed_type")
    if kind == "UNet2DConditionModel" and src["mid_block_type"] != "UNetMidBlock2DSimpleCrossAttn":
        # (its "UNetMidBlock2D" is a single residual block, unlike UNet2DModel's)
        raise unsupported("mid_block_type")
    out: dict[str, Any] = {
        k: src[k]
        for k in (
            "in_channels",
            "out_channels",
            "block_out_channels",
            "layers_per_block",
            "down_block_types",
            "up_block_types",
            "mid_block_type",
            "norm_num_groups",
            "norm_eps",
            "resnet_time_scale_shift",
            "flip_sin_to_cos",
            "freq_shift",
            "time_embedding_dim",
            "dropout",
        )
    }
    out.update(sample_size=src["sample_size"], extra_emb=src["class_embed_type"] == "identity")
    if kind == "UNet2DConditionModel":
        out.update(
            attention_head_dim=src["attention_head_dim"], cross_attention_dim=src["cross_attention_dim"]
        )
    else:
        attention = bool(src["add_attention"]) and src["mid_block_type"] == "UNetMidBlock2D"
        # UNet2DModel: heads of attention_head_dim channels (None: one head); the mid attention
        # gets a GroupNorm only if attn_norm_num_groups is set or the time embedding is additive.
        groups = src["attn_norm_num_groups"]
        if groups is None and src["resnet_time_scale_shift"] == "default":
            groups = src["norm_num_groups"]
        out.update(
            mid_attention=attention,
            mid_attention_norm_groups=groups if attention else None,
            attention_head_dim=src["attention_head_dim"] if attention else None,
            cross_attention_dim=None,
        )
    try:
        return cls.from_dict(out)
    except ConfigError as e:  # names the field, e.g. "KarloUNetConfig.down_block_types[1]: ..."
        raise UserError(f"diffusers {kind} config is not supported for Karlo: {e}") from None


class KarloUNet(nn.Module):
    """Karlo's decoder UNet or super-resolution UNet (one class, set by the config).

    Args:
        config: the architecture.
    """

    def __init__(self, config: KarloUNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        chans, n, emb_dim = cfg.block_out_channels, len(cfg.block_out_channels), cfg.time_embed_dim
        res = functools.partial(
            ResBlock,
            emb_dim=emb_dim,
            groups=cfg.norm_num_groups,
            eps=cfg.norm_eps,
            scale_shift=cfg.resnet_time_scale_shift == "scale_shift",
            dropout=cfg.dropout,
        )
        cross = None
        if cfg.has_cross_attention:
            assert cfg.attention_head_dim is not None
            cross = functools.partial(
                KarloAttention,
                head_dim=cfg.attention_head_dim,
                norm_groups=cfg.norm_num_groups,
                norm_eps=_CROSS_ATTENTION_NORM_EPS,
                context_dim=cfg.cross_attention_dim,
            )

        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.time_mlp = nn.Sequential(nn.Linear(chans[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        # 1. Encoder; remember each skip's width, the order the decoder pops them in reverse.
        skips, ch = [chans[0]], chans[0]
        self.down = nn.ModuleList()
        for i, (kind, width) in enumerate(zip(cfg.down_block_types, chans)):
            last = i == n - 1
            attn = cross if kind == "SimpleCrossAttnDownBlock2D" else None
            self.down.append(DownLevel(ch, width, cfg.layers_per_block, res, attn, downsample=not last))
            skips += [width] * (cfg.layers_per_block + (0 if last else 1))
            ch = width

        # 2. Bottleneck.
        if cfg.mid_block_type == "UNetMidBlock2DSimpleCrossAttn":
            mid_attn = cross
        elif cfg.mid_attention:
            mid_attn = functools.partial(
                KarloAttention,
                head_dim=cfg.attention_head_dim or ch,
                norm_groups=cfg.mid_attention_norm_groups,
                norm_eps=cfg.norm_eps,
            )
        else:
            mid_attn = None
        self.mid = MidLevel(ch, res, mid_attn)

        # 3. Decoder: layers_per_block + 1 blocks per level, each eating one skip.
        self.up = nn.ModuleList()
        for i, kind in enumerate(cfg.up_block_types):
            width = chans[n - 1 - i]
            level_skips = [skips.pop() for _ in range(cfg.layers_per_block + 1)]
            attn = cross if kind == "SimpleCrossAttnUpBlock2D" else None
            self.up.append(UpLevel(ch, level_skips, width, res, attn, upsample=i != n - 1))
            ch = width
        assert not skips, "every encoder output must feed one decoder block"

        self.norm_out = GroupNorm32(cfg.norm_num_groups, ch, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        emb: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the diffusion output.

        Args:
            x: (B, C_in, H, W), H and W multiples of ``config.downsample_factor``.
            t: (B,) or scalar timesteps (integer or float).
            emb: (B, E) added to the time embedding (the decoder's additive CLIP embedding from
                :class:`KarloTextProj`); required exactly when ``config.extra_emb``.
            context: (B, L, cross_attention_dim) tokens for the cross-attention layers.
            context_mask: (B, L) bool, True at tokens to attend to; None attends to all.

        Returns:
            (B, C_out, H, W) float32.
        """
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        factor = cfg.downsample_factor
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"input sides {tuple(x.shape[-2:])} must be multiples of {factor}")
        if (emb is None) == cfg.extra_emb:
            raise ValueError(f"emb must be {'given' if cfg.extra_emb else 'None'} for this network")
        if cfg.has_cross_attention and context is None:
            raise ValueError("this network needs context tokens")
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t

        w = self.time_mlp[0].weight
        e = self.time_mlp(sinusoidal_features(t, w.shape[1], cfg.flip_sin_to_cos, cfg.freq_shift).to(w.dtype))
        if emb is not None:
            e = e + emb.to(e.dtype)
        # The SiLU every residual block applies to the embedding before its projection, done once.
        e = F.silu(e)

        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            h = level(h, e, context, context_mask, skips)
        h = self.mid(h, e, context, context_mask)
        for level in self.up:
            h = level(h, e, context, context_mask, skips)
        return self.conv_out(F.silu(self.norm_out(h))).float()


# ---------------------------------------------------------------------------------------------
# Key tables: diffusers state-dict keys -> ours (format of unclip.convert.keys).
# ---------------------------------------------------------------------------------------------

# Inside one residual block / attention layer: diffusers name -> ours.
_RESNET_PARTS = [
    (r"norm1", "norm1"),
    (r"conv1", "conv1"),
    (r"time_emb_proj", "emb_proj"),
    (r"norm2", "norm2"),
    (r"conv2", "conv2"),
    (r"conv_shortcut", "skip"),
]
_ATTENTION_PARTS = [
    (r"group_norm", "norm"),
    (r"to_q", "to_q"),
    (r"to_k", "to_k"),
    (r"to_v", "to_v"),
    (r"add_k_proj", "context_k"),
    (r"add_v_proj", "context_v"),
    (r"to_out\.0", "to_out"),
]
# Where the blocks sit: diffusers prefix (groups are level / block indices) -> ours. Both sides
# number levels and blocks the same way, so no index arithmetic is needed.
_UNET_BLOCKS = [
    (r"down_blocks\.(\d+)\.resnets\.(\d+)", r"down.\1.res.\2", _RESNET_PARTS),
    (r"down_blocks\.(\d+)\.downsamplers\.0", r"down.\1.downsample", _RESNET_PARTS),
    (r"down_blocks\.(\d+)\.attentions\.(\d+)", r"down.\1.attn.\2", _ATTENTION_PARTS),
    (r"mid_block\.resnets\.([01])", r"mid.res.\1", _RESNET_PARTS),
    (r"mid_block\.attentions\.0", r"mid.attn", _ATTENTION_PARTS),
    (r"up_blocks\.(\d+)\.resnets\.(\d+)", r"up.\1.res.\2", _RESNET_PARTS),
    (r"up_blocks\.(\d+)\.upsamplers\.0", r"up.\1.upsample", _RESNET_PARTS),
    (r"up_blocks\.(\d+)\.attentions\.(\d+)", r"up.\1.attn.\2", _ATTENTION_PARTS),
]

UNET_KEYS: list[tuple[str, str | None]] = [
    (r"conv_in\.(?P<p>weight|bias)", r"conv_in.\g<p>"),
    (r"time_embedding\.linear_1\.(?P<p>weight|bias)", r"time_mlp.0.\g<p>"),
    (r"time_embedding\.linear_2\.(?P<p>weight|bias)", r"time_mlp.2.\g<p>"),
    *(
        (rf"{block_rx}\.{part_rx}\.(?P<p>weight|bias)", rf"{block_tpl}.{part}.\g<p>")
        for block_rx, block_tpl, parts in _UNET_BLOCKS
        for part_rx, part in parts
    ),
    (r"conv_norm_out\.(?P<p>weight|bias)", r"norm_out.\g<p>"),
    (r"conv_out\.(?P<p>weight|bias)", r"conv_out.\g<p>"),
]
"""diffusers ``UNet2DConditionModel`` / ``UNet2DModel`` keys -> :class:`KarloUNet` keys."""
