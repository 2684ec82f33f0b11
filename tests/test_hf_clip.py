"""A converted transformers CLIP (component kind "hf_clip") against transformers itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from unclip.checkpoint import load_component
from unclip.clip import ClipEncoder
from unclip.clip.hf_clip import HFClip, HFClipConfig, load_hf_clip
from unclip.convert.clip import convert_clip, convert_clip_parts
from unclip.errors import UserError

transformers = pytest.importorskip("transformers")

WORDS = ["a", "red", "blue", "circle", "square", "on", "the", "left", "right", "photo", "of"]
TEXTS = ["a red circle", "the photo of a blue square on the left right"]  # the second fills L
L = 12
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def write_tokenizer(directory) -> None:
    """A tiny CLIP BPE tokenizer in the slow-tokenizer files Karlo ships (vocab.json, merges.txt),
    padding with the end token as OpenAI's CLIP tokenizer does. Ids: 66 start, 67 end."""
    chars = sorted(set("".join(WORDS)))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges: dict[tuple[str, str], None] = {}
    for w in WORDS:
        parts = [*w[:-1], w[-1] + "</w>"]
        while len(parts) > 1:
            merges[(parts[0], parts[1])] = None
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    assert len(vocab) == 68
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    conf = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": L,
        "pad_token": "<|endoftext|>",
        **special,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(conf))


def write_preprocessor(directory) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    conf = {"image_processor_type": "CLIPImageProcessor", "image_mean": MEAN, "image_std": STD}
    (directory / "preprocessor_config.json").write_text(json.dumps(conf))


def tiny_config(legacy_eos: bool = False):
    """eos_token_id 2 is the legacy value of OpenAI's (and Karlo's) configs: pooling at argmax id."""
    text = dict(
        vocab_size=68,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=L,
        bos_token_id=0 if legacy_eos else 66,
        eos_token_id=2 if legacy_eos else 67,
        pad_token_id=1 if legacy_eos else 67,
        projection_dim=24,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=16,
        patch_size=4,
        projection_dim=24,
    )
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)


def tiny_clip_dir(tmp_path, name: str = "src"):
    torch.manual_seed(0)
    model = transformers.CLIPModel(tiny_config()).eval()
    src = tmp_path / name
    model.save_pretrained(src)
    write_tokenizer(src)
    write_preprocessor(src)
    return model, src


def karlo_dirs(tmp_path):
    """Karlo's layout: text_encoder/, image_encoder/, tokenizer/, feature_extractor/."""
    cfg = tiny_config(legacy_eos=True)
    torch.manual_seed(1)
    text = transformers.CLIPTextModelWithProjection(cfg.text_config).eval()
    vision = transformers.CLIPVisionModelWithProjection(cfg.vision_config).eval()
    text.save_pretrained(tmp_path / "text_encoder")
    vision.save_pretrained(tmp_path / "image_encoder")
    write_tokenizer(tmp_path / "tokenizer")
    write_preprocessor(tmp_path / "feature_extractor")
    return text, vision


def exact(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def unit_close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Unit-norm embeddings: equal up to float32 rounding of the norm.

    transformers divides by (x**2).sum() ** 0.5 and we use F.normalize, so the last bit may differ;
    the raw projections before it are compared bit for bit.
    """
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_convert_clip_matches_transformers(tmp_path, normalize):
    model, src = tiny_clip_dir(tmp_path)
    out = convert_clip(src, tmp_path / "clip", normalize=normalize)
    assert {"component.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    clip, config, header = load_component(out)
    assert header["kind"] == "hf_clip" and isinstance(config, HFClipConfig) and config.normalize is normalize
    clip.attach_tokenizer_from(out)
    assert isinstance(clip, HFClip) and isinstance(clip, ClipEncoder)
    assert (clip.embed_dim, clip.image_size, clip.token_width, clip.max_text_len) == (24, 16, 32, L)
    assert config.image_mean == MEAN and config.image_std == STD

    ids, mask = clip.tokenize(TEXTS)
    assert ids.shape == (2, L) and mask.sum(1).tolist() == [5, L]
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask.long(), pixel_values=pixels)
        text_out = model.text_model(input_ids=ids, attention_mask=mask.long())
        raw_text = model.text_projection(text_out.pooler_output)
        raw_image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    enc = clip.encode_text(TEXTS)
    check = unit_close if normalize else exact
    check(enc.text_emb, ref.text_embeds if normalize else raw_text)
    exact(enc.text_tokens[mask], text_out.last_hidden_state[mask])
    assert (enc.text_tokens[~mask] == 0).all()
    check(clip.encode_image(pixels, preprocessed=True), ref.image_embeds if normalize else raw_image)
    assert clip.encode_image(torch.rand(1, 3, 20, 24) * 2 - 1).shape == (1, 24)


def test_karlo_parts(tmp_path):
    text, vision = karlo_dirs(tmp_path)
    out = convert_clip_parts(
        tmp_path / "text_encoder",
        tmp_path / "image_encoder",
        tmp_path / "clip",
        normalize=False,
        tokenizer_dir=tmp_path / "tokenizer",
        preprocessor_dir=tmp_path / "feature_extractor",
    )
    clip = load_hf_clip(out)
    assert clip.config.image_mean == MEAN
    assert float(clip.model.logit_scale.detach()) == pytest.approx(2.6592)
    ids, mask = clip.tokenize(TEXTS)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        # diffusers' UnCLIPPipeline calls the text encoder WITHOUT the attention mask; with the
        # causal mask the real tokens and the pooled end token come out the same either way.
        ref = text(input_ids=ids)
        ref_image = vision(pixel_values=pixels).image_embeds
    enc = clip.encode_text(TEXTS)
    exact(enc.text_emb, ref.text_embeds)
    exact(enc.text_tokens[mask], ref.last_hidden_state[mask])
    exact(clip.encode_image(pixels, preprocessed=True), ref_image)


def test_text_only(tmp_path):
    text, _ = karlo_dirs(tmp_path)
    for out in (
        convert_clip_parts(
            tmp_path / "text_encoder", None, tmp_path / "a", tokenizer_dir=tmp_path / "tokenizer"
        ),
        convert_clip(tmp_path / "text_encoder", tmp_path / "b", tokenizer_dir=tmp_path / "tokenizer"),
    ):
        clip = load_hf_clip(out)
        assert clip.model.__class__.__name__ == "CLIPTextModelWithProjection"
        ids, _ = clip.tokenize(TEXTS)
        with torch.no_grad():
            want = text(input_ids=ids).text_embeds
        exact(clip.encode_text(TEXTS).text_emb, torch.nn.functional.normalize(want, dim=-1))
        with pytest.raises(UserError, match="without its image tower"):
            clip.encode_image(torch.zeros(1, 3, 16, 16), preprocessed=True)


class _Payload:
    pass


def test_pytorch_bin_weights_only(tmp_path):
    model, src = tiny_clip_dir(tmp_path)
    state = dict(model.state_dict())
    # Older transformers saved this buffer; the key table drops it.
    state["text_model.embeddings.position_ids"] = torch.arange(L)[None]
    (src / "model.safetensors").unlink()
    torch.save(state, src / "pytorch_model.bin")
    clip = load_hf_clip(convert_clip(src, tmp_path / "clip"))
    ids, mask = clip.tokenize(TEXTS)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask.long(), pixel_values=torch.zeros(1, 3, 16, 16))
    unit_close(clip.encode_text(TEXTS).text_emb, ref.text_embeds)

    # A pickle with anything but tensors is refused (weights_only), never executed.
    torch.save({"x": _Payload()}, src / "pytorch_model.bin")
    with pytest.raises(UserError, match="weights_only"):
        convert_clip(src, tmp_path / "evil")


def test_bad_inputs(tmp_path):
    model, src = tiny_clip_dir(tmp_path)
    with pytest.raises(UserError, match=r"no config\.json"):
        convert_clip(tmp_path / "nowhere", tmp_path / "o")
    state = model.state_dict()

    # Missing and misshapen tensors are listed.
    save_file({k: v for k, v in state.items() if k != "visual_projection.weight"}, src / "model.safetensors")
    with pytest.raises(UserError, match=r"missing: model\.visual_projection\.weight"):
        convert_clip(src, tmp_path / "o")
    save_file({**state, "text_projection.weight": torch.zeros(24, 31)}, src / "model.safetensors")
    with pytest.raises(UserError, match=r"text_projection.weight \(24, 31\) vs \(24, 32\)"):
        convert_clip(src, tmp_path / "o")
    save_file({**state, "text_model.extra.weight": torch.zeros(1)}, src / "model.safetensors")
    with pytest.raises(UserError, match=r"unexpected: model\.text_model\.extra\.weight"):
        convert_clip(src, tmp_path / "o")
    (src / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UserError, match="corrupt"):
        convert_clip(src, tmp_path / "o")
    (src / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no weights"):
        convert_clip(src, tmp_path / "o")
    (src / "config.json").write_text("{broken")
    with pytest.raises(UserError, match="corrupt"):
        convert_clip(src, tmp_path / "o")
    (src / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="model_type is 'bert'"):
        convert_clip(src, tmp_path / "o")

    # Karlo parts: a tower in the wrong slot, a missing tokenizer.
    karlo_dirs(tmp_path)
    with pytest.raises(UserError, match="clip_vision_model"):
        convert_clip_parts(tmp_path / "text_encoder", tmp_path / "text_encoder", tmp_path / "o")
    with pytest.raises(UserError, match="no tokenizer"):
        convert_clip_parts(tmp_path / "text_encoder", None, tmp_path / "o")


def test_load_failures(tmp_path, monkeypatch):
    _, src = tiny_clip_dir(tmp_path)
    out = convert_clip(src, tmp_path / "clip")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (out / f).unlink()
    with pytest.raises(UserError, match="no tokenizer files"):
        load_hf_clip(out)
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        load_component(out)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UserError, match=r"pip install 'unclip\[adapters\]'"):
        load_component(out)


def test_in_a_model_directory(tmp_path):
    from unclip.models.decoder import Decoder, DecoderConfig
    from unclip.pipeline import load_model, save_model
    from unclip.presets import get_preset

    _, src = tiny_clip_dir(tmp_path)
    clip = load_hf_clip(convert_clip(src, tmp_path / "clip", normalize=False))
    dec = Decoder(
        DecoderConfig.from_dict({**get_preset("decoder-tiny-test")["model"], "clip_dim": 24, "text_dim": 32})
    )
    save_model(tmp_path / "model", {"clip": clip, "decoder": dec})
    modules, index = load_model(tmp_path / "model")
    assert index["components"]["clip"]["kind"] == "hf_clip"
    loaded = modules["clip"]
    assert isinstance(loaded, HFClip) and loaded.normalize is False
    exact(loaded.encode_text(TEXTS).text_emb, clip.encode_text(TEXTS).text_emb)


def test_load_encoder_opens_converted_clip(tmp_path):
    """``unclip.clip.load_encoder`` (what ``--clip`` and ``--eval-clip`` use) opens hf_clip components."""
    import transformers

    from unclip.clip import load_encoder
    from unclip.convert.clip import convert_clip

    src = tmp_path / "hf"
    model = transformers.CLIPModel(
        transformers.CLIPConfig(
            text_config={"vocab_size": 40, "hidden_size": 16, "intermediate_size": 20, "num_attention_heads": 2,
                         "num_hidden_layers": 1, "max_position_embeddings": 12, "eos_token_id": 3},
            vision_config={"hidden_size": 16, "intermediate_size": 20, "num_attention_heads": 2,
                           "num_hidden_layers": 1, "image_size": 16, "patch_size": 8},
            projection_dim=8,
        )
    )  # fmt: skip
    model.save_pretrained(str(src))
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from karlo_helpers import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.model_max_length = 12
    tok.save_pretrained(str(src))
    out = convert_clip(src, tmp_path / "ours")
    enc = load_encoder(out)
    assert type(enc).__name__ == "HFClip"
    e = enc.encode_text(["a red circle"]).text_emb
    assert e.shape == (1, 8) and abs(float(e.norm()) - 1.0) < 1e-5
