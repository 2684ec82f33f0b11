from __future__ import annotations

import math

import torch

from unclip.clip.loss import caption_positives, contrastive_loss
from unclip.data.shapes import sample_scene
from unclip.train.clip import shapes_positives


def test_identity_positives_match_clip_loss():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    loss, m = contrastive_loss(img, txt, scale)
    logits = scale * img @ txt.t()
    labels = torch.arange(6)
    ref = (
        torch.nn.functional.cross_entropy(logits, labels)
        + torch.nn.functional.cross_entropy(logits.t(), labels)
    ) / 2
    torch.testing.assert_close(loss, ref)
    assert 0 <= m["acc_i2t"] <= 1 and m["positives_per_row"] == 1
    # Perfectly aligned embeddings with a large scale give a near-zero loss.
    loss, m = contrastive_loss(img, img, torch.tensor(100.0))
    assert loss < 1e-3 and m["acc_i2t"] == 1.0


def test_duplicate_captions_are_positives():
    p = caption_positives(["a", "b", "a"])
    assert p.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), dim=-1)
    loss, _ = contrastive_loss(emb, emb, torch.tensor(50.0), p)
    # Each of the two identical pairs splits its target evenly: the loss floor is log 2 for them.
    assert math.isclose(loss.item(), 2 / 3 * math.log(2), rel_tol=1e-3)


def test_shapes_positives_use_ground_truth():
    import numpy as np

    rng = np.random.default_rng(0)
    red = sample_scene(rng, num_objects=1, objects=[{"shape": "star", "color": "red"}]).to_dict()
    blue = sample_scene(rng, num_objects=1, objects=[{"shape": "star", "color": "blue"}]).to_dict()
    two = sample_scene(rng, num_objects=2, objects=[{"shape": "star"}, {"shape": "circle"}]).to_dict()
    caps = ["a red star", "a star", "a star and a circle"]
    p = shapes_positives(caps, [red, blue, two])
    assert p.tolist() == [[True, False, False], [True, True, False], [False, False, True]]


def test_counterfactual_batches_differ_in_one_attribute_and_resume():
    from unclip.data.shapes import SceneSpec
    from unclip.train.data import ShapesBatches

    stream = ShapesBatches(16, 8, seed=3, counterfactual=True)
    batch = next(stream)
    assert batch["image"].shape == (8, 3, 16, 16) and stream.position == 4
    changed = 0
    for a, b in zip(batch["spec"][:4], batch["spec"][4:]):
        sa, sb = SceneSpec.from_dict(a), SceneSpec.from_dict(b)
        assert sa.background == sb.background and len(sa.objects) == len(sb.objects)
        diffs = sum(
            x.attributes()[k] != y.attributes()[k]
            for x, y in zip(sorted(sa.objects, key=str), sorted(sb.objects, key=str))
            for k in ("shape", "color", "size", "fill", "position")
        )
        changed += diffs >= 1
    assert changed == 4
    again = ShapesBatches(16, 8, seed=3, counterfactual=True)
    again.load_state_dict(stream.state_dict())
    assert next(again)["caption"] == next(stream)["caption"]
    p = shapes_positives(batch["caption"], batch["spec"])
    assert p.diag().all()
