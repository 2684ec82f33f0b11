"""Evaluating a CLIP on its own: retrieval, zero-shot attributes, attribute binding.

Paper §6 / Figs. 14-15 hypothesise that CLIP embeddings bind attributes to objects poorly; the
shapes world lets us measure that exactly. Suites:

* ``shapes``: text->image and image->text R@1/R@5 on new scenes (a retrieved item counts as a
  hit when its caption is identical to the query's, since different scenes can share a caption),
  on the training distribution and on held-out compositions; zero-shot classification of colour,
  shape, size, fill and position of single-object scenes by prompt ensembles; two-object binding
  (the correct caption vs the one with the two colours swapped; chance is 50 %).
* ``emoji``: R@1/R@5 among all images of the val, held-out-concept and held-out-style splits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unclip.errors import UserError

BATCH = 256


# --------------------------------------------------------------------------- generic metrics
def _batched(
    fn: Callable[[Any], torch.Tensor], items: Sequence[Any] | torch.Tensor, batch: int = BATCH
) -> torch.Tensor:
    return torch.cat([fn(items[i : i + batch]) for i in range(0, len(items), batch)])


def encode_texts(clip: Any, texts: Sequence[str]) -> torch.Tensor:
    """(N, D) normalised text embeddings, batched."""
    with torch.inference_mode():
        return _batched(lambda t: clip.encode_text(list(t)).text_emb.cpu(), list(texts))


def encode_images(clip: Any, images: torch.Tensor | Sequence[Any]) -> torch.Tensor:
    """(N, D) normalised image embeddings of [-1, 1] tensors (N, 3, H, W) or PIL images, batched."""
    with torch.inference_mode():
        return _batched(lambda x: clip.encode_image(x).cpu(), images)


def recall_at_k(sim: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Fraction of queries with a relevant item among their top k.

    Args:
        sim: (Q, N) similarities of queries to items.
        relevant: (Q, N) bool, which items count as hits for each query.
    """
    order = sim.argsort(dim=1, descending=True)
    hits = relevant.gather(1, order)
    return {f"R@{k}": hits[:, :k].any(1).float().mean().item() for k in ks}


def retrieval(
    img: torch.Tensor, txt: torch.Tensor, captions: Sequence[str] | None = None
) -> dict[str, float]:
    """Text->image and image->text R@1/R@5 for paired (N, D) embeddings.

    With ``captions``, any item whose caption equals the query's caption counts as a hit.
    """
    n = img.shape[0]
    if captions is None:
        relevant = torch.eye(n, dtype=torch.bool)
    else:
        ids = torch.tensor([{c: i for i, c in enumerate(dict.fromkeys(captions))}[c] for c in captions])
        relevant = ids[:, None] == ids[None, :]
    sim = txt @ img.t()
    t2i = recall_at_k(sim, relevant)
    i2t = recall_at_k(sim.t(), relevant.t())
    out = {f"t2i_{k}": v for k, v in t2i.items()}
    out.update({f"i2t_{k}": v for k, v in i2t.items()})
    out["n"] = n
    return out


def zero_shot(
    img: torch.Tensor, class_prompts: dict[str, list[str]], labels: Sequence[str], clip: Any
) -> float:
    """Accuracy of classifying images by prompt ensembles.

    Each class embedding is the normalised mean of its prompts' embeddings (CLIP's prompt
    ensembling); an image gets the class of highest cosine similarity.
    """
    names = list(class_prompts)
    embs = []
    for name in names:
        e = encode_texts(clip, class_prompts[name])
        embs.append(F.normalize(e.mean(0), dim=-1))
    pred = (img @ torch.stack(embs).t()).argmax(1)
    truth = torch.tensor([names.index(lab) for lab in labels])
    return (pred == truth).float().mean().item()


# --------------------------------------------------------------------------- shapes world
def _shapes():
    try:
        from unclip.data import shapes
        from unclip.data.shapes import scene, stream, vocab
    except ModuleNotFoundError as e:  # pragma: no cover - the shapes world is part of the package
        raise UserError(f"the shapes suite needs unclip.data.shapes ({e})") from None
    return shapes, scene, vocab, stream


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def position_phrases(pos: str) -> list[str]:
    """How the captioner says a position ("at the top left", "in the top left corner", ...)."""
    if pos == "center":
        return ["in the center", "in the middle", "at the center"]
    if " " in pos:
        return [f"in the {pos}", f"at the {pos}", f"in the {pos} corner"]
    if pos in ("top", "bottom"):
        return [f"at the {pos}", f"near the {pos}", f"at the {pos} edge"]
    return [f"on the {pos}", f"at the {pos}", f"on the {pos} side"]


def attribute_prompts(attribute: str) -> dict[str, list[str]]:
    """Prompt ensembles naming only ``attribute``, in the captioner's words and synonyms.

    E.g. colour "red": "a red shape", "a red object", "a red thing", "something red"; shape "cross":
    "a cross", "a plus sign"; position "top left": "a shape at the top left", ... The shapes world's
    partial captions ("something green", "a star") are of exactly this form.
    """
    from unclip.data.shapes import captions as cap

    vocab = _shapes()[2]
    nouns = cap.GENERIC_NOUNS
    prompts: dict[str, list[str]] = {}
    if attribute == "shape":
        return {v: [_article(w) for w in cap.SHAPE_WORDS[v]] for v in vocab.SHAPES}
    if attribute == "background":
        # The captioner's background phrases ("on a navy background", ", navy background").
        return {
            v: [f"{_article(n)} {p} a {v} background" for n in nouns for p in ("on", "against")]
            + [f"something on a {v} background", f"{v} background"]
            for v in vocab.BACKGROUNDS
        }
    if attribute == "position":
        for v in vocab.POSITIONS:
            prompts[v] = [f"{_article(n)} {p}" for n in nouns for p in position_phrases(v)]
            prompts[v] += [f"something {p}" for p in position_phrases(v)]
        return prompts
    table, values = {
        "color": (cap.COLOR_WORDS, vocab.COLORS),
        "size": (cap.SIZE_WORDS, vocab.SIZES),
        "fill": (cap.FILL_WORDS, vocab.FILLS),
    }[attribute]
    for v in values:
        prompts[v] = [_article(f"{w} {n}") for w in table[v] for n in nouns] + [
            f"something {w}" for w in table[v]
        ]
    return prompts


def short_phrase(obj: Any) -> str:
    """ "a red circle": colour and shape only (canonical words)."""
    from unclip.data.shapes import captions as cap

    return _article(f"{cap.COLOR_WORDS[obj.color][0]} {cap.SHAPE_WORDS[obj.shape][0]}")


def scene_caption(spec: Any) -> str:
    """The canonical full caption (every attribute, relation, background) of the shapes world."""
    return _shapes()[0].describe(spec)


def _render_batch(specs: Sequence[Any], size: int) -> torch.Tensor:
    """(N, 3, size, size) in [-1, 1], exactly as the training stream renders."""
    image_tensor = _shapes()[3].image_tensor
    return torch.stack([image_tensor(s, size) for s in specs])


def _scenes(n: int, seed: int, **kwargs: Any) -> list[Any]:
    scene = _shapes()[1]
    rng = np.random.default_rng(seed)
    return [scene.sample_scene(rng, **kwargs) for _ in range(n)]


def shapes_zero_shot(clip: Any, n: int = 500, seed: int = 1234, render_size: int = 64) -> dict[str, float]:
    """Zero-shot accuracy per attribute on single-object scenes (training-split combinations).

    Keys: the object's colour, shape, size, fill and position, and the scene's background colour.
    """
    specs = _scenes(n, seed, split="train", num_objects=1)
    img = encode_images(clip, _render_batch(specs, render_size))
    out = {}
    for attribute in ("color", "shape", "size", "fill", "position"):
        labels = [s.objects[0].attributes()[attribute] for s in specs]
        out[attribute] = zero_shot(img, attribute_prompts(attribute), labels, clip)
    out["background"] = zero_shot(img, attribute_prompts("background"), [s.background for s in specs], clip)
    return out


def shapes_binding(clip: Any, n: int = 500, seed: int = 4321, render_size: int = 64) -> dict[str, float]:
    """How often a two-object scene's caption beats the same caption with the colours swapped.

    Scenes have two objects of different colours and different shapes, so the swapped caption names
    the same words bound the other way. ``binding``: short captions ("a red circle and a blue
    square" vs "a blue circle and a red square"); ``binding_full``: the canonical full captions
    (sizes, fills, positions, relation, background) with the colours swapped. Chance is 50 %.
    """
    scene = _shapes()[1]
    rng = np.random.default_rng(seed)
    specs = []
    while len(specs) < n:
        s = scene.sample_scene(rng, split="train", num_objects=2)
        a, b = s.objects
        if a.color != b.color and a.shape != b.shape:
            specs.append(s)
    img = encode_images(clip, _render_batch(specs, render_size))
    out: dict[str, float] = {"n": n}
    for name, fn in (
        ("binding", lambda s: f"{short_phrase(s.objects[0])} and {short_phrase(s.objects[1])}"),
        ("binding_full", scene_caption),
    ):
        true_caps = [fn(s) for s in specs]
        swapped_caps = [fn(_swap_colors(s)) for s in specs]
        t_true, t_swap = encode_texts(clip, true_caps), encode_texts(clip, swapped_caps)
        out[name] = ((img * t_true).sum(1) > (img * t_swap).sum(1)).float().mean().item()
    return out


def _swap_colors(s: Any) -> Any:
    import dataclasses

    a, b = s.objects
    objs = (
        dataclasses.replace(a, color=b.color, rgb=b.rgb),
        dataclasses.replace(b, color=a.color, rgb=a.rgb),
    )
    return dataclasses.replace(s, objects=objs)


def shapes_retrieval(
    clip: Any, n: int = 1000, seed: int = 99, split: str = "train", render_size: int = 64
) -> dict[str, float]:
    """R@1/R@5 among ``n`` new scenes of ``split`` ("train": unseen scenes, seen compositions;
    "heldout": compositions never trained on)."""
    specs = _scenes(n, seed, split=split)
    caps = [scene_caption(s) for s in specs]
    img = encode_images(clip, _render_batch(specs, render_size))
    return retrieval(img, encode_texts(clip, caps), caps)


def evaluate_shapes(clip: Any, n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The whole shapes suite (see the module docstring)."""
    return {
        "suite": "shapes",
        "zero_shot": shapes_zero_shot(clip, n, seed + 1234),
        "binding": shapes_binding(clip, n, seed + 4321),
        "retrieval": {
            "val": shapes_retrieval(clip, n, seed + 99, "train"),
            "heldout": shapes_retrieval(clip, n, seed + 98, "heldout"),
        },
    }


def quick_shapes_eval(clip: Any, image_size: int = 64, n: int = 200) -> dict[str, float]:
    """A few-second version for training-time learning curves (fixed seeds)."""
    zs = shapes_zero_shot(clip, n, 1234)
    out = {f"zs_{k}": v for k, v in zs.items()}
    b = shapes_binding(clip, n, 4321)
    out["binding"], out["binding_full"] = b["binding"], b["binding_full"]
    r = shapes_retrieval(clip, n, 99)
    out["t2i_R@1"], out["i2t_R@1"] = r["t2i_R@1"], r["i2t_R@1"]
    return out


# --------------------------------------------------------------------------- emoji
def evaluate_emoji(clip: Any, data: str | Path, limit: int | None = None) -> dict[str, Any]:
    """R@1/R@5 among all images of each evaluation split of an emoji build (first caption each)."""
    from unclip.data.emoji import read_manifest

    manifest = read_manifest(data)
    results: dict[str, Any] = {"suite": "emoji", "retrieval": {}}
    for split in ("val", "heldout_concept", "heldout_style"):
        if split not in manifest.get("shards", {}):
            continue
        from unclip.data.emoji import load_emoji_split

        samples = load_emoji_split(data, split, limit=limit)
        if not samples:
            continue
        x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        caps = [s.captions[0] for s in samples]
        results["retrieval"][split] = retrieval(encode_images(clip, x), encode_texts(clip, caps), caps)
    return results


# --------------------------------------------------------------------------- reports
def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, float) and not math.isnan(v) else str(v)


def markdown_report(results: dict[str, Any]) -> str:
    """Tables of a results dict from :func:`evaluate_shapes` / :func:`evaluate_emoji` (percent)."""
    lines = [f"# CLIP evaluation: {results.get('suite')} ({results.get('clip', '')})", ""]
    if "zero_shot" in results:
        zs = results["zero_shot"]
        lines += ["## Zero-shot attributes (single objects, %)", "", "| " + " | ".join(zs) + " |"]
        lines += ["|" + "---|" * len(zs), "| " + " | ".join(_pct(v) for v in zs.values()) + " |", ""]
    if "binding" in results:
        b = results["binding"]
        lines += ["## Binding (two objects: true caption beats colour-swapped, chance 50 %)", ""]
        lines += [
            f'- short captions ("a red circle and a blue square"): {_pct(b["binding"])} % of {b["n"]} scenes'
        ]
        if "binding_full" in b:
            lines += [f"- full canonical captions: {_pct(b['binding_full'])} %"]
        lines.append("")
    if results.get("retrieval"):
        lines += [
            "## Retrieval (%)",
            "",
            "| split | n | t2i R@1 | t2i R@5 | i2t R@1 | i2t R@5 |",
            "|---|---|---|---|---|---|",
        ]
        for split, r in results["retrieval"].items():
            cols = [_pct(r[k]) for k in ("t2i_R@1", "t2i_R@5", "i2t_R@1", "i2t_R@5")]
            lines.append(f"| {split} | {r['n']} | " + " | ".join(cols) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write results.json and results.md into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown_report(results))
    return out / "results.json", out / "results.md"
