"""The symmetric contrastive (InfoNCE) loss of CLIP (Radford et al. 2021; paper App. C).

Generalised to several positives per row: with small synthetic worlds a caption is often true of
several images of a batch ("a star", or two identical captions), and one-hot targets would push
the model to tell apart pairs that its supervision says are equal. Each row's target is then
uniform over its positives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def caption_positives(captions: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, B) bool: ``[i, j]`` is True when captions i and j are the same string."""
    index: dict[str, int] = {}
    ids = torch.tensor([index.setdefault(c, len(index)) for c in captions], device=device)
    return ids[:, None] == ids[None, :]


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    positives: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric cross-entropy over image-text similarities.

    Args:
        image_emb: (B, D) unit-norm image embeddings.
        text_emb: (B, D) unit-norm text embeddings of the paired captions.
        logit_scale: () the (clamped) inverse temperature.
        positives: (B, B) bool, ``[i, j]`` True when caption j describes image i; must include
            the diagonal. None means the identity (one positive per row, CLIP's loss).

    Returns:
        (loss, metrics) with in-batch image->text / text->image top-1 accuracy (a hit is any
        positive) and the scale.
    """
    logits = logit_scale * image_emb.float() @ text_emb.float().t()  # (B_img, B_txt)
    if positives is None:
        positives = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    pos = positives.float()
    loss_i = F.cross_entropy(logits, pos / pos.sum(1, keepdim=True))
    loss_t = F.cross_entropy(logits.t(), pos.t() / pos.t().sum(1, keepdim=True))
    hit_i = positives.gather(1, logits.argmax(1, keepdim=True))[:, 0]
    hit_t = positives.t().gather(1, logits.argmax(0)[:, None])[:, 0]
    metrics = {
        "acc_i2t": hit_i.float().mean().item(),
        "acc_t2i": hit_t.float().mean().item(),
        "logit_scale": float(logit_scale.detach()),
        "positives_per_row": pos.sum(1).mean().item(),
    }
    return (loss_i + loss_t) / 2, metrics
