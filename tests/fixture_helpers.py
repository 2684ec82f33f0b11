"""Small on-disk fixtures shared by several test files."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

EMOJI_FIXTURE = Path(__file__).parent / "fixtures" / "emoji"
EMOJI_STYLES = ("noto", "twemoji", "fluent-flat", "fluent-3d")


def build_emoji_fixture(out: Path) -> Path:
    """A 32 px emoji build of the committed fixture art (twemoji held out as the unseen style)."""
    from unclip.data.emoji import STYLES, ImageFiles, build_emoji

    sources = {name: ImageFiles.from_dir(STYLES[name], EMOJI_FIXTURE / name) for name in EMOJI_STYLES}
    build_emoji(
        out,
        sources=sources,
        catalog=EMOJI_FIXTURE,
        workers=1,
        styles=EMOJI_STYLES,
        size=32,
        heldout_style="twemoji",
    )
    return out


def write_embedding_shards(root: Path, n: int = 96, d: int = 16, w: int = 12, length: int = 6) -> Path:
    """``n`` caption/image embedding pairs whose image embedding depends on the caption."""
    from unclip.data.embeddings import EmbeddingShardWriter

    g = torch.Generator().manual_seed(0)
    text_emb = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    image_emb = F.normalize(text_emb + 0.3 * torch.randn(n, d, generator=g) + 1.0, dim=-1)
    mask = torch.zeros(n, length, dtype=torch.bool)
    for i in range(n):
        mask[i, : 2 + i % 4] = True
    tokens = torch.randn(n, length, w, generator=g) * mask[..., None]
    with EmbeddingShardWriter(root, shard_size=40, float_dtype="float16") as writer:
        writer.write(
            {
                "image_emb": image_emb,
                "text_emb": text_emb,
                "text_tokens": tokens,
                "text_mask": mask,
                "caption": [f"caption {i}" for i in range(n)],
            }
        )
    return root
