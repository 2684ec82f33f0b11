"""Normalisation layers computed in fp32 under autocast (ADM GroupNorm32, open_clip LayerNormFp32)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that runs in fp32 and returns the input's dtype. x: (B, C, ...)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            w = self.weight.float() if self.weight is not None else None
            b = self.bias.float() if self.bias is not None else None
            y = F.group_norm(x.float(), self.num_groups, w, b, self.eps)
        return y.to(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm that runs in fp32 and returns the input's dtype. x: (..., C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            w = self.weight.float() if self.weight is not None else None
            b = self.bias.float() if self.bias is not None else None
            y = F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)
        return y.to(x.dtype)
