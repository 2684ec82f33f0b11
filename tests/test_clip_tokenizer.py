from __future__ import annotations

import pytest
import torch

from clip_helpers import CAPTIONS
from unclip.clip.tokenizer import load_bpe, train_bpe
from unclip.errors import UserError


def test_train_round_trip_save_load(tmp_path):
    tok = train_bpe(CAPTIONS * 3, 320, 32)
    assert tok.vocab_size <= 320
    ids, mask = tok([*CAPTIONS[:4], "A Red Circle, ünïcode ✓"])
    assert ids.shape == (5, 32) and mask.dtype == torch.bool
    assert ids[:, 0].eq(tok.tokenizer.token_to_id("<sot>")).all()
    for i, text in enumerate(CAPTIONS[:4]):
        assert tok.decode(ids[i]) == text
    # Byte-level: unseen characters still round-trip (lower-cased), no unknown tokens.
    assert tok.decode(ids[4]) == "a red circle, ünïcode ✓"
    tok.save(tmp_path / "tokenizer.json")
    tok2 = load_bpe(tmp_path / "tokenizer.json", 32)
    ids2, mask2 = tok2([*CAPTIONS[:4], "A Red Circle, ünïcode ✓"])
    assert torch.equal(ids, ids2) and torch.equal(mask, mask2)
    # Whole caption words become single tokens on a small vocabulary like the shapes world's.
    assert tok.num_tokens("a small red circle") <= 7


def test_bad_inputs(tmp_path):
    tok = train_bpe(CAPTIONS, 300, 8)
    with pytest.raises(UserError):
        tok([""])
    with pytest.raises(UserError):
        tok([3])  # type: ignore[list-item]
    with pytest.raises(UserError):
        train_bpe(CAPTIONS, 100, 8)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError):
        load_bpe(tmp_path / "bad.json", 8)
    with pytest.raises(UserError):
        load_bpe(tmp_path / "missing.json", 8)
