"""Text tokenizers of our CLIP, over HF ``tokenizers``.

* :func:`train_bpe` trains a byte-level BPE tokenizer on training captions (paper §7 / App. C:
  captions are BPE-tokenized). It is shipped with the model as ``tokenizer.json`` in the
  component directory.
* :func:`load_wordpiece` opens the WordPiece tokenizer of a pretrained text model (MiniLM).

Both are wrapped by :class:`ClipTokenizer`, which pads every prompt to the model's fixed
``context_length`` and returns ``(ids, mask)``. Prompts longer than that are truncated (the end
token is kept) and a warning is logged; empty prompts are a :class:`~unclip.errors.UserError`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from unclip.errors import UserError

logger = logging.getLogger(__name__)

PAD, SOT, EOT = "<pad>", "<sot>", "<eot>"


def _tokenizers():
    try:
        import tokenizers
    except ModuleNotFoundError as e:  # pragma: no cover - tokenizers is a declared dependency of [train]
        raise UserError("the CLIP tokenizer needs the 'tokenizers' package: pip install tokenizers") from e
    return tokenizers


class ClipTokenizer:
    """Fixed-length tokenizer: ``tok(["a red circle"]) -> (ids (B, L) int64, mask (B, L) bool)``.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` whose post-processor adds the start/end tokens.
        context_length: L, the fixed number of positions (prompts are padded or truncated to it).
        pad_id: id used at padding positions (mask False there).
    """

    def __init__(self, tokenizer, context_length: int, pad_id: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.pad_id = pad_id
        tokenizer.no_padding()
        # Truncation is left to us: we keep the end token and log the cut (see __call__).
        tokenizer.no_truncation()

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize a batch of prompts.

        Args:
            texts: B prompts (non-empty strings).

        Returns:
            ids (B, L) int64 and mask (B, L) bool (True at real tokens), L = context_length.

        Raises:
            UserError: for an empty list, a non-string or an empty/blank prompt.
        """
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise UserError("no prompts given")
        for t in texts:
            if not isinstance(t, str):
                raise UserError(f"a prompt must be a string, got {type(t).__name__}")
            if not t.strip():
                raise UserError("empty prompt: give some text to encode")
        encs = self.tokenizer.encode_batch(list(texts))
        L = self.context_length
        ids = torch.full((len(texts), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(texts), L, dtype=torch.bool)
        cut: list[int] = []
        for i, enc in enumerate(encs):
            seq = enc.ids
            if len(seq) > L:
                # Keep the first L-1 tokens and the final (end) token, so that end-token pooling
                # and [SEP]-terminated encoders still see a well-formed sequence.
                cut.append(i)
                seq = [*seq[: L - 1], seq[-1]]
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = True
        if cut:
            i = cut[0]
            logger.warning(
                "%d of %d prompts truncated to %d tokens (e.g. %d tokens: %r)",
                len(cut),
                len(texts),
                L,
                len(encs[i].ids),
                texts[i][:80],
            )
        return ids, mask

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids (one prompt, padding allowed) -> text without special tokens."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode([i for i in ids if i != self.pad_id], skip_special_tokens=True).strip()

    def num_tokens(self, text: str) -> int:
        """Tokens of ``text`` including start/end, before truncation."""
        return len(self.tokenizer.encode(text).ids)

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as ``tokenizer.json`` (HF tokenizers format)."""
        from unclip.checkpoint import atomic_write_bytes

        atomic_write_bytes(path, self.tokenizer.to_str(pretty=False).encode())

    def to_str(self) -> str:
        return self.tokenizer.to_str(pretty=False)


def load_bpe(path_or_json: str | Path, context_length: int) -> ClipTokenizer:
    """Open a BPE tokenizer written by :func:`train_bpe` (a tokenizer.json path or its text)."""
    tk = _tokenizers()
    text = str(path_or_json)
    if text.lstrip().startswith("{"):
        tok = tk.Tokenizer.from_str(text)
    else:
        p = Path(text)
        if not p.is_file():
            raise UserError(f"tokenizer file not found: {p}")
        try:
            tok = tk.Tokenizer.from_file(str(p))
        except Exception as e:  # tokenizers raises plain Exception on bad JSON
            raise UserError(f"corrupt tokenizer file {p}: {e}") from None
    pad = tok.token_to_id(PAD)
    if pad is None or tok.token_to_id(SOT) is None or tok.token_to_id(EOT) is None:
        raise UserError(f"tokenizer {text[:80]} lacks the {PAD}/{SOT}/{EOT} special tokens")
    return ClipTokenizer(tok, context_length, pad)


def train_bpe(texts: Iterable[str], vocab_size: int, context_length: int) -> ClipTokenizer:
    """Train a byte-level BPE tokenizer on captions.

    Lower-cased and NFKC-normalised; byte-level, so any text encodes without unknown tokens. Ids
    0, 1, 2 are ``<pad>``, ``<sot>``, ``<eot>``; every prompt becomes ``<sot> ... <eot>``.

    Args:
        texts: training captions (iterated once).
        vocab_size: upper bound on the vocabulary (the model's embedding rows); small corpora
            give fewer tokens.
        context_length: fixed prompt length of the returned tokenizer.
    """
    tk = _tokenizers()
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    if vocab_size < 260:
        raise UserError(f"vocab_size {vocab_size} is too small for a byte-level BPE (needs >= 260)")
    tok = tk.Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, SOT, EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    sot, eot = tok.token_to_id(SOT), tok.token_to_id(EOT)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, sot), (EOT, eot)]
    )
    return ClipTokenizer(tok, context_length, tok.token_to_id(PAD))


def load_wordpiece(path: str | Path, context_length: int) -> ClipTokenizer:
    """Open a BERT WordPiece ``tokenizer.json`` (e.g. MiniLM's): ``[CLS] ... [SEP]``, pad id 0."""
    tk = _tokenizers()
    p = Path(path)
    if not p.is_file():
        raise UserError(f"tokenizer file not found: {p}")
    tok = tk.Tokenizer.from_file(str(p))
    pad = tok.token_to_id("[PAD]")
    return ClipTokenizer(tok, context_length, 0 if pad is None else pad)
