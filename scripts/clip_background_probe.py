"""Does a CLIP's image embedding carry the scene's background colour? A linear probe.

    OMP_NUM_THREADS=1 python scripts/clip_background_probe.py runs/clip-shapes-n/clip [--train 2000] [--test 500]
    OMP_NUM_THREADS=1 python scripts/clip_background_probe.py --model shapes [--prior-n 200]

Encodes fresh shapes-world scenes (training split, random backgrounds, one to three objects),
fits a softmax regression from the image embedding to the five background names (Adam, 500
steps) and prints its accuracy on separate scenes, with nearest-centroid accuracy beside it.
Chance is 20 %. This is the measurement behind docs/clip.md, "Background".

With ``--model`` (a model name or directory) the probe is fitted on that model's CLIP, and then
reads the background of the diffusion prior's embeddings for captions that name it (the test
scenes, captioned at random with the background always stated; prior at the model's defaults).
That is how far the text-to-image path can carry the background before the decoder.

The text side: on 128 pairs of scenes that differ only in their background, each captioned with
its background named, how often a caption is closer to its own image than to the twin (chance
50 %; the zero-shot reading in ``unclip evaluate`` averages over object words as well).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from unclip.clip import load_encoder
from unclip.data.shapes import BACKGROUNDS, sample_scene
from unclip.data.shapes.stream import image_tensor


@torch.no_grad()
def embed(clip, n: int, rng: np.random.Generator, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, D) unit image embeddings and (n,) background indices of n fresh scenes."""
    specs = [sample_scene(rng) for _ in range(n)]
    x = torch.stack([image_tensor(s, size) for s in specs])
    e = torch.cat([clip.encode_image(x[i : i + 100]).float() for i in range(0, n, 100)])
    return e, torch.tensor([BACKGROUNDS.index(s.background) for s in specs])


@torch.no_grad()
def pair_accuracy(clip, n: int = 128, seed: int = 99) -> float:
    """Fraction of background-edit pairs whose caption is closer to its own image than the twin's."""
    from unclip.train.data import ShapesBatches

    batch = next(ShapesBatches(64, 2 * n, seed=seed, counterfactual=True, background_edits=1.0))
    img = F.normalize(clip.encode_image(batch["image"]).float(), dim=-1)
    txt = F.normalize(clip.encode_text(batch["caption"]).text_emb.float(), dim=-1)
    own, twin = (txt * img).sum(-1), (txt * img.roll(n, 0)).sum(-1)
    return float((own > twin).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip", nargs="?", help="a CLIP component directory")
    ap.add_argument("--model", help="a model name or directory: its CLIP, and its prior's embeddings")
    ap.add_argument("--prior-n", type=int, default=200, help="captions through the prior (with --model)")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if (a.clip is None) == (a.model is None):
        ap.error("give a CLIP directory or --model")
    torch.manual_seed(a.seed)
    pipe = None
    if a.model:
        from unclip.pipeline import UnCLIPPipeline

        pipe = UnCLIPPipeline.from_pretrained(a.model)
        clip = pipe.clip
    else:
        clip = load_encoder(a.clip)
    rng = np.random.default_rng(a.seed)
    e_tr, y_tr = embed(clip, a.train, rng)
    e_te, y_te = embed(clip, a.test, rng)
    k = len(BACKGROUNDS)
    w = torch.zeros(e_tr.shape[1], k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(500):
        opt.zero_grad()
        F.cross_entropy(e_tr @ w * 10 + b, y_tr).backward()
        opt.step()
    probe = ((e_te @ w * 10 + b).argmax(1) == y_te).float().mean().item()
    centroids = torch.stack([e_tr[y_tr == c].mean(0) for c in range(k)])
    nearest = ((e_te @ centroids.t()).argmax(1) == y_te).float().mean().item()
    print(
        f"{a.clip or a.model}: background linear probe {100 * probe:.1f} %, nearest centroid {100 * nearest:.1f} % (chance 20 %)"
    )
    print(
        f"background pairs: caption closer to its own image {100 * pair_accuracy(clip):.1f} % (chance 50 %)"
    )
    if pipe is not None:
        from unclip.data.shapes import caption

        specs = [sample_scene(rng) for _ in range(a.prior_n)]
        prompts = [caption(s, rng, with_background=True) for s in specs]
        y = torch.tensor([BACKGROUNDS.index(s.background) for s in specs])
        with torch.no_grad():
            text = pipe.encode_prompts(prompts)
            e = pipe.prior_embeds(text, pipe.generators(list(range(len(prompts))))).float()
        e = F.normalize(e, dim=-1)
        read = ((e @ w * 10 + b).argmax(1) == y).float().mean().item()
        print(f"{a.model}: background of the prior's embeddings, read by the probe: {100 * read:.1f} %")


if __name__ == "__main__":
    main()
