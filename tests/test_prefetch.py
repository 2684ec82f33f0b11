"""Worker processes render the shapes world ahead without changing a single sample or the resume."""

from __future__ import annotations

import torch

from unclip.train.data import ShapesBatches, iter_ordered
from unclip.train.decoder import ShapesPairs
from unclip.train.prefetch import ordered_map


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def _square(x: int) -> int:
    return x * x


def test_ordered_map_keeps_order_with_workers():
    assert list(ordered_map(_square, range(10), num_workers=2)) == [x * x for x in range(10)]
    assert list(ordered_map(_square, range(5), num_workers=0)) == [0, 1, 4, 9, 16]


def test_shapes_batches_with_workers_match_and_resume():
    kw = dict(size=16, batch_size=6, seed=3, counterfactual=True, background_edits=0.5)
    here = ShapesBatches(**kw)
    ahead = ShapesBatches(**kw, num_workers=2)
    ref = [next(here) for _ in range(3)]
    for r in ref[:2]:
        _same(r, next(ahead))
    # A stream resumed from the saved position (workers restart there) gives the third batch.
    resumed = ShapesBatches(**kw, num_workers=2)
    resumed.load_state_dict(ahead.state_dict())
    _same(ref[2], next(resumed))
    assert resumed.state_dict() == here.state_dict()


def test_shapes_pairs_with_workers_match():
    here = ShapesPairs(16, [32], 4, seed=1)
    ahead = ShapesPairs(16, [32], 4, seed=1, num_workers=2)
    for _ in range(2):
        _same(next(here), next(ahead))
    assert here.state_dict() == ahead.state_dict()


def test_iter_ordered_with_workers_matches():
    plain = list(iter_ordered("shapes", 16, 4, start=2, limit=13, seed=5))
    ahead = list(iter_ordered("shapes", 16, 4, start=2, limit=13, seed=5, num_workers=2))
    assert [len(b["key"]) for b in plain] == [4, 4, 3]
    assert len(plain) == len(ahead)
    for a, b in zip(plain, ahead, strict=True):
        _same(a, b)
