"""The UNet trunk shared by the decoder and the upsamplers (ADM / GLIDE family).

Residual blocks with scale-shift GroupNorm conditioned on an embedding (timestep + whatever the
stage adds), BigGAN-style residual down/up-sampling, multi-head attention at chosen resolutions
(optionally attending to context tokens too, GLIDE's ``encoder_kv``), and a zero-initialised
output convolution so an untrained network predicts exactly zero [ADM §3, GLIDE §4.1].

What a stage feeds in beyond ``(x, t)`` is its own business: the decoder adds a projected CLIP
image embedding to the timestep embedding and passes context tokens (see
:mod:`unclip.models.decoder`); the upsampler concatenates the low-resolution image to ``x`` and
adds a noise-level embedding (see :mod:`unclip.models.upsampler`). The trunk only knows an
``extra_emb`` and an optional ``context``.

Shapes: ``x`` (B, C_in, H, W) with H and W divisible by ``2 ** (len(channel_mult) - 1)``; any such
size runs (the upsampler is trained on crops and run at full size). Norms compute in fp32 under
autocast; convolutions are channels_last-friendly (no layout-changing reshapes on the hot path).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from unclip.config import Config
from unclip.nn.attention import SpatialAttention
from unclip.nn.embeddings import TimestepMLP, zero_module
from unclip.nn.norms import GroupNorm32


@dataclasses.dataclass(frozen=True)
class UNetConfig(Config):
    """Architecture of the trunk (input/output widths are set by the stage that owns it).

    Attributes:
        model_channels: base width; level ``i`` has ``model_channels * channel_mult[i]`` channels.
        channel_mult: width multiplier per resolution level (the number of levels).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sides, at ``image_size`` input, that get attention
            (paper Tab. 3: 32, 16, 8 at 64 px). Empty for the convolution-only upsamplers.
        image_size: the input side the network is designed for; fixes where attention sits and
            the size of the learned positional maps. Other sizes still run.
        num_head_channels: channels per attention head.
        dropout: dropout inside residual blocks.
        resample: "resblock" (BigGAN-style residual up/down blocks, ADM) or "conv" (strided conv
            down, nearest + conv up).
        pos_emb: "learned" adds a learned 2-D positional map before every attention layer's
            q/k/v projection so attention can place things (design.md §10); "none" is ADM.
        input_coords: append two coordinate channels (x, y in [-1, 1]) to the input.
    """

    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    image_size: int = 32
    num_head_channels: int = 32
    dropout: float = 0.0
    resample: Literal["resblock", "conv"] = "resblock"
    pos_emb: Literal["none", "learned"] = "none"
    input_coords: bool = False

    def __post_init__(self) -> None:
        if self.model_channels <= 0 or self.num_res_blocks <= 0 or not self.channel_mult:
            raise ValueError("model_channels, num_res_blocks and channel_mult must be positive / non-empty")
        if any(m <= 0 for m in self.channel_mult):
            raise ValueError(f"channel_mult must be positive, got {self.channel_mult}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} is not divisible by {factor} (2^(levels-1))")
        sides = {self.image_size // 2**i for i in range(len(self.channel_mult))}
        bad = [r for r in self.attention_resolutions if r not in sides]
        if bad:
            raise ValueError(f"attention_resolutions {bad} are not feature-map sides {sorted(sides)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def emb_dim(self) -> int:
        """Width of the timestep (+ conditioning) embedding, 4x the base width as in ADM."""
        return 4 * self.model_channels

    @property
    def downsample_factor(self) -> int:
        """Input sides must be multiples of this."""
        return 2 ** (len(self.channel_mult) - 1)


def _norm(channels: int) -> GroupNorm32:
    # 32 groups as in ADM, or the largest power-of-two divisor for widths like 48.
    return GroupNorm32(math.gcd(32, channels), channels)


class Downsample(nn.Module):
    """Halve H and W: a stride-2 3x3 conv, or 2x2 average pooling when ``conv`` is False."""

    def __init__(self, channels: int, conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W: nearest neighbour, then a 3x3 conv when ``conv`` is True."""

    def __init__(self, channels: int, conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """Residual block with scale-shift norm: GN(h) * (1 + scale) + shift from the embedding [ADM].

    Args:
        channels: input width.
        out_channels: output width.
        emb_dim: embedding width.
        dropout: dropout before the last conv.
        resample: None, "down" or "up": resample inside the block (BigGAN style, ADM
            ``resblock_updown``) so the skip path is resampled too.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float = 0.0,
        resample: Literal["down", "up"] | None = None,
    ) -> None:
        super().__init__()
        self.in_norm = _norm(channels)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.resample = resample
        self.emb = nn.Linear(emb_dim, 2 * out_channels)
        self.out_norm = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        # Zero init: every block starts as the identity, which keeps deep UNets trainable.
        self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W); emb: (B, E) already passed through SiLU. Returns (B, C_out, H', W')."""
        h = F.silu(self.in_norm(x))
        h = self.in_conv(self._resample(h))
        x = self._resample(x)
        scale, shift = self.emb(emb).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class UNetStage(nn.ModuleList):
    """A sequence of ResBlock / SpatialAttention / Downsample / Upsample run in order."""

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialAttention):
                x = layer(x, context, context_mask)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """ADM-style UNet trunk.

    Args:
        config: the architecture.
        in_channels: channels of the input ``x`` (e.g. 3, or 6 with a concatenated low-res image).
        out_channels: channels of the output (e.g. 3, or 6 with learned variance).
        context_dim: width of context tokens the attention layers also attend to (the decoder's
            caption + CLIP tokens); None for self-attention only.
    """

    def __init__(
        self, config: UNetConfig, in_channels: int, out_channels: int, context_dim: int | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.in_channels, self.out_channels = in_channels, out_channels
        self.gradient_checkpointing = False
        mc, emb_dim = config.model_channels, config.emb_dim
        self.time_embed = TimestepMLP(mc, emb_dim)

        def attn(ch: int, side: int) -> SpatialAttention:
            pos = side if config.pos_emb == "learned" else None
            return SpatialAttention(ch, min(config.num_head_channels, ch), context_dim, pos)

        def down(ch: int) -> nn.Module:
            if config.resample == "resblock":
                return ResBlock(ch, ch, emb_dim, config.dropout, "down")
            return Downsample(ch, conv=True)

        def up(ch: int) -> nn.Module:
            if config.resample == "resblock":
                return ResBlock(ch, ch, emb_dim, config.dropout, "up")
            return Upsample(ch, conv=True)

        # 1. Encoder: remember each stage's width for the skip connections.
        extra_in = 2 if config.input_coords else 0
        self.input_blocks = nn.ModuleList([UNetStage([nn.Conv2d(in_channels + extra_in, mc, 3, padding=1)])])
        skips, ch, side = [mc], mc, config.image_size
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * mc, emb_dim, config.dropout)]
                ch = mult * mc
                if side in config.attention_resolutions:
                    layers.append(attn(ch, side))
                self.input_blocks.append(UNetStage(layers))
                skips.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(UNetStage([down(ch)]))
                skips.append(ch)
                side //= 2

        # 2. Middle: attention only when the network uses attention at all (not the upsamplers).
        middle: list[nn.Module] = [ResBlock(ch, ch, emb_dim, config.dropout)]
        if config.attention_resolutions:
            middle.append(attn(ch, side))
        middle.append(ResBlock(ch, ch, emb_dim, config.dropout))
        self.middle_block = UNetStage(middle)

        # 3. Decoder: num_res_blocks + 1 blocks per level, each eating one skip.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), mult * mc, emb_dim, config.dropout)]
                ch = mult * mc
                if side in config.attention_resolutions:
                    layers.append(attn(ch, side))
                if level and i == config.num_res_blocks:
                    layers.append(up(ch))
                    side *= 2
                self.output_blocks.append(UNetStage(layers))
        assert not skips, "every encoder stage must feed one decoder stage"

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each stage's activations in the backward pass (less memory, ~30% more time)."""
        self.gradient_checkpointing = enabled

    def _run(self, stage: UNetStage, h: torch.Tensor, *args: torch.Tensor | None) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, h, *args, use_reentrant=False)
        return stage(h, *args)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        extra_emb: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the diffusion target.

        Args:
            x: (B, C_in, H, W) noisy input (plus any concatenated conditioning channels).
            t: (B,) timesteps (integer or float).
            extra_emb: (B, E) added to the timestep embedding (E = ``config.emb_dim``).
            context: (B, L, context_dim) tokens for the attention layers.
            context_mask: (B, L) bool, True at real tokens.

        Returns:
            (B, C_out, H, W) float32.
        """
        factor = self.config.downsample_factor
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"input sides {tuple(x.shape[-2:])} must be multiples of {factor}")
        emb = self.time_embed(t)
        if extra_emb is not None:
            emb = emb + extra_emb.to(emb.dtype)
        # The SiLU every ResBlock applies to the embedding before its projection, done once.
        emb = F.silu(emb)
        if self.config.input_coords:
            b, _, h, w = x.shape
            ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)[:, None].expand(h, w)
            xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)[None, :].expand(h, w)
            coords = torch.stack([xs, ys])[None].expand(b, 2, h, w)
            x = torch.cat([x, coords], dim=1)
        hs = []
        h = x
        for stage in self.input_blocks:
            h = self._run(stage, h, emb, context, context_mask)
            hs.append(h)
        h = self._run(self.middle_block, h, emb, context, context_mask)
        for stage in self.output_blocks:
            h = self._run(stage, torch.cat([h, hs.pop()], dim=1), emb, context, context_mask)
        return self.out(h).float()
