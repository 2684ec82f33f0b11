"""Turn a ``--data`` spec into a resumable stream of batches.

Specs:

* ``shapes`` / ``shapes:SIZE``: the infinite shapes-world stream (training split), rendered at
  SIZE px (default: the model's image size).
* ``synthetic`` / ``synthetic:N``: a tiny built-in set of N coloured blocks with captions, for
  tests and smoke runs (no other package needed).
* an emoji build directory (``unclip data emoji``): its ``train`` split, every caption of every
  image as one pair.
* a folder of ``*.tar`` files, a brace pattern or glob of shards: webdataset shards.
* any other folder: images with captions (:class:`unclip.data.folder.ImageCaptionFolder`).

Every stream yields dicts ``{"image": (B, 3, H, W) float in [-1, 1], "caption": [B str], ...}``
(shapes streams add ``"spec"``: B scene dicts) and has ``state_dict()`` / ``load_state_dict()``
giving its exact position, which the training checkpoint stores so a resumed run sees the same
batches as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from unclip.errors import UserError
from unclip.train.prefetch import ordered_map


@runtime_checkable
class BatchStream(Protocol):
    """An endless iterator of batches whose position can be saved and restored."""

    batch_size: int

    def __next__(self) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def rank_share(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the arguments, else torch.distributed's, else (0, 1).

    Position-based streams (map-style data, the shapes world, embedding shards) split work by
    micro-batch: the global stream is what one process would read; rank ``r`` of ``W`` takes
    micro-batches ``r, r + W, ...`` and every rank advances the shared position by ``W`` batches.
    The saved position is then the same on every rank.
    """
    if rank is None or world_size is None:
        from unclip.train.distributed import dist_info

        info = dist_info()
        rank = info.rank if rank is None else rank
        world_size = info.world_size if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return rank, world_size


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep everything else as lists."""
    out: dict[str, Any] = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


# --------------------------------------------------------------------------- synthetic data
SYN_COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SYN_SHAPES = ("square", "circle")
SYN_SIDES = ("left", "right")


class SyntheticCaptions(torch.utils.data.Dataset):
    """N tiny images "a {colour} {shape} on the {side}" on grey, a pure function of the index.

    Args:
        n: number of items.
        size: image side.
        seed: varies sizes/offsets (not the caption set).
    """

    def __init__(self, n: int = 256, size: int = 16, seed: int = 0) -> None:
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, index))
        names = list(SYN_COLORS)
        color = names[index % len(names)]
        shape = SYN_SHAPES[(index // len(names)) % 2]
        side = SYN_SIDES[(index // (2 * len(names))) % 2]
        s = self.size
        img = np.full((s, s, 3), 128, np.float32)
        r = s * rng.uniform(0.14, 0.22)
        cx = s * (0.27 if side == "left" else 0.73) + rng.uniform(-1, 1)
        cy = s * 0.5 + rng.uniform(-2, 2)
        yy, xx = np.mgrid[0:s, 0:s] + 0.5
        if shape == "circle":
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        else:
            inside = (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
        img[inside] = SYN_COLORS[color]
        x = torch.from_numpy(img).permute(2, 0, 1) / 127.5 - 1.0
        return {"image": x, "caption": f"a {color} {shape} on the {side}"}


# --------------------------------------------------------------------------- map-style data
class MapBatches:
    """Shuffled batches over a map-style dataset, epoch after epoch; resumable.

    The order of epoch ``e`` is a permutation drawn from ``(seed, e)``; a batch that reaches the end
    of an epoch is completed from the next one. The position is (epoch, index within the epoch).

    Args:
        dataset: items are dicts with ``image`` (3, H, W) tensors and ``caption`` strings.
        batch_size: items per batch.
        seed: shuffling seed.
        shuffle: False keeps dataset order (evaluation, embedding).
        num_workers: DataLoader workers decoding items in parallel (0: in this process).
        rank, world_size: this process's share (:func:`rank_share`); torch.distributed's by default.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise UserError("the dataset is empty")
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed, shuffle
        self.num_workers = num_workers
        self.rank, self.world_size = rank_share(rank, world_size)
        self.epoch, self.index = 0, 0
        self._it: Iterator[dict[str, Any]] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.dataset)  # type: ignore[arg-type]
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng((self.seed, epoch)).permutation(n)

    def _index_batches(self, epoch: int, index: int) -> Iterator[list[int]]:
        """This rank's batches: slice ``rank`` of consecutive global chunks of ``world`` batches."""
        order, chunk = self._order(epoch), []
        span = self.batch_size * self.world_size
        lo = self.rank * self.batch_size
        while True:
            while index < len(order):
                chunk.append(int(order[index]))
                index += 1
                if len(chunk) == span:
                    yield chunk[lo : lo + self.batch_size]
                    chunk = []
            epoch, index, order = epoch + 1, 0, self._order(epoch + 1)

    def _make_iter(self) -> Iterator[dict[str, Any]]:
        batches = self._index_batches(self.epoch, self.index)
        if self.num_workers <= 0:
            return (collate([self.dataset[i] for i in b]) for b in batches)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.num_workers, collate_fn=collate
        )
        return iter(loader)

    def __iter__(self) -> MapBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            self._it = self._make_iter()
        batch = next(self._it)
        # Advance the position by what was consumed (workers may have prefetched more).
        n = len(self.dataset)  # type: ignore[arg-type]
        self.index += self.batch_size * self.world_size
        while self.index >= n:
            self.index -= n
            self.epoch += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "map",
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "len": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (
            state.get("kind") != "map"
            or state.get("len") != len(self.dataset)
            or state.get("seed") != self.seed
        ):
            raise UserError(f"cannot resume the data stream: saved {state}, now {self.state_dict()}")
        self.epoch, self.index, self._it = int(state["epoch"]), int(state["index"]), None


# --------------------------------------------------------------------------- emoji corpus
class EmojiPairs(torch.utils.data.Dataset):
    """(image, caption) pairs of one split of an emoji build, held in memory.

    Every caption of every image is one item, so an epoch sees each pairing once.

    Args:
        directory: the build directory.
        split: "train", "val", "heldout_concept" or "heldout_style".
        size: output side (images are resized if the build has another size).
        first_caption_only: one item per image with its first caption (evaluation, embedding).
    """

    def __init__(
        self,
        directory: str | Path,
        split: str = "train",
        size: int | None = None,
        first_caption_only: bool = False,
    ) -> None:
        from unclip.data.emoji import load_emoji_split

        self.samples = load_emoji_split(directory, split)
        if not self.samples:
            raise UserError(f"{directory}: the {split} split is empty")
        self.size = size
        self.pairs = [
            (i, j)
            for i, s in enumerate(self.samples)
            for j in range(1 if first_caption_only else len(s.captions))
        ]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, j = self.pairs[index]
        s = self.samples[i]
        x = torch.tensor(s.image).permute(2, 0, 1).float() / 127.5 - 1.0
        if self.size is not None and x.shape[-1] != self.size:
            x = torch.nn.functional.interpolate(
                x[None], size=(self.size, self.size), mode="bicubic", antialias=True
            )[0]
            x = x.clamp(-1, 1)
        key = f"{s.meta.get('style', '')}/{s.meta.get('hexcode', i)}"
        return {"image": x, "caption": s.captions[j], "key": key}


def is_emoji_build(path: str | Path) -> bool:
    p = Path(path) / "manifest.json"
    if not p.is_file():
        return False
    try:
        import json

        return json.loads(p.read_text()).get("format", "").startswith("unclip-emoji/")
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------- webdataset
class ShardBatches:
    """Batches from :class:`unclip.data.wds.WebDatasetShards`, epoch after epoch; resumable."""

    def __init__(self, urls: str, size: int, batch_size: int, seed: int = 0, num_workers: int = 0) -> None:
        from unclip.data.wds import WebDatasetShards

        self.ds = WebDatasetShards(
            urls, size=size, fields={"image": "jpg;jpeg;png;webp", "caption": "txt"}, seed=seed
        )
        self.batch_size, self.num_workers = batch_size, num_workers
        self._it: Iterator[dict[str, Any]] | None = None

    def _loader(self) -> Iterator[dict[str, Any]]:
        return iter(
            torch.utils.data.DataLoader(
                self.ds, batch_size=self.batch_size, num_workers=self.num_workers, drop_last=True
            )
        )

    def __iter__(self) -> ShardBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        for _ in range(2):
            if self._it is None:
                self._it = self._loader()
            try:
                batch = next(self._it)
            except StopIteration:
                self.ds.set_epoch(self.ds.epoch + 1)
                self._it = None
                continue
            self.ds.record(batch)
            return {"image": batch["image"], "caption": list(batch["caption"])}
        raise UserError(f"the shards hold fewer than one batch of {self.batch_size} samples")

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "wds", **self.ds.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        if state.pop("kind", None) != "wds":
            raise UserError("cannot resume: the saved data position is not from webdataset shards")
        self.ds.load_state_dict(state)
        self._it = None


# --------------------------------------------------------------------------- shapes world
class ShapesBatches:
    """Batches of the infinite shapes-world stream; position = stream samples consumed.

    With ``counterfactual=True`` half of each batch are edits of the other half: the same scene
    with one attribute of one object changed (shape, colour, size, fill or grid position; the other
    objects keep their attributes and cells) and captioned afresh. Contrastive training on random
    batches can match captions by colour and background alone and never learn shape or position
    (measured: docs/clip.md); a near-identical image that differs in one attribute makes that
    attribute necessary. Batch order: the B/2 stream samples, then their B/2 edits. Counterfactual
    batches also carry CLIP's ``positives`` (see :func:`unclip.train.clip.shapes_positives`).

    ``background_edits`` is the fraction of edits that change the background instead (objects
    untouched); both captions of such a pair then name their background. Otherwise only a fifth of
    captions name it and the pairs share it, and the text tower never learns it (docs/clip.md).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int = 0,
        split: str = "train",
        counterfactual: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        background_edits: float = 0.0,
        num_workers: int = 0,
    ) -> None:
        if counterfactual and batch_size % 2:
            raise UserError(f"counterfactual shapes batches need an even batch size, got {batch_size}")
        if not 0.0 <= background_edits <= 1.0 or (background_edits > 0 and not counterfactual):
            raise UserError(
                f"background edits need counterfactual batches and a fraction in [0, 1], got {background_edits}"
            )
        self.size, self.batch_size, self.seed, self.split = size, batch_size, seed, split
        self.counterfactual = counterfactual
        self.background_edits = background_edits
        self.rank, self.world_size = rank_share(rank, world_size)
        self.num_workers = num_workers
        self.position = 0
        self._batches: Iterator[dict[str, Any]] | None = None

    def __iter__(self) -> ShapesBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        n = self.batch_size // 2 if self.counterfactual else self.batch_size
        if self._batches is None:  # (re)start the workers at the current position
            make = ShapesBatchAt(
                self.size, self.seed, self.split, n, self.counterfactual, self.background_edits
            )
            keys = itertools.count(self.position + self.rank * n, n * self.world_size)
            self._batches = ordered_map(make, keys, self.num_workers)
        batch = next(self._batches)
        self.position += n * self.world_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "shapes",
            "position": self.position,
            "seed": self.seed,
            "size": self.size,
            "split": self.split,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "shapes" or state.get("seed") != self.seed or state.get("size") != self.size:
            raise UserError(f"cannot resume the data stream: saved {state}, now {self.state_dict()}")
        self.position = int(state["position"])
        self._batches = None


@dataclasses.dataclass(frozen=True)
class ShapesBatchAt:
    """The shapes-world batch whose first stream sample is ``start`` (for :class:`ShapesBatches`
    and the decoder's ``ShapesPairs``; picklable, so worker processes can compute it)."""

    size: int
    seed: int
    split: str
    n: int
    counterfactual: bool = False
    background_edits: float = 0.0
    extra_sizes: tuple[int, ...] = ()  # more renders of each scene, as ``image_<px>``

    def __call__(self, start: int) -> dict[str, Any]:
        items = shapes_items(self.size, self.seed, self.split, start, self.n, self.extra_sizes)
        if not self.counterfactual:
            return collate(items)
        from unclip.train.clip import shapes_positives

        pairs = [counterfactual_pair(it, self.seed, self.size, self.background_edits) for it in items]
        batch = collate([a for a, _ in pairs] + [b for _, b in pairs])
        # CLIP's positives: O(B^2) caption checks, so here (in a worker) rather than in the step.
        batch["positives"] = shapes_positives(batch["caption"], batch["spec"])
        return batch


@dataclasses.dataclass(frozen=True)
class _OrderedShapes:
    """Shapes-world samples ``start .. min(start + n, limit) - 1`` with their keys (picklable)."""

    size: int
    seed: int
    split: str
    n: int
    limit: int

    def __call__(self, start: int) -> dict[str, Any]:
        items = shapes_items(self.size, self.seed, self.split, start, min(self.n, self.limit - start))
        for k, it in enumerate(items):
            it["key"] = f"shapes-{self.seed}-{self.split}-{start + k:09d}"
        return collate(items)


def shapes_items(
    size: int, seed: int, split: str, start: int, n: int, extra_sizes: Sequence[int] = ()
) -> list[dict[str, Any]]:
    """Samples ``start .. start + n - 1`` of the shapes-world stream (one process's micro-batch)."""
    from unclip.data.shapes import ShapesStream

    stream = ShapesStream(size=size, seed=seed, split=split, extra_sizes=extra_sizes)  # type: ignore[arg-type]
    # By global index, not by iterating: inside a DataLoader worker the stream would take only
    # that worker's share of the indices.
    return [stream.item(i) for i in range(start, start + n)]


def edit_scene(spec: Any, rng: np.random.Generator, tries: int = 4) -> Any | None:
    """The scene with one attribute of one object changed, or None if no valid edit was found.

    Every object keeps its other attributes and its grid cell; the background is kept; exact
    coordinates, colours within their range and rotations are re-sampled. Edits that would create a
    held-out combination are not made.
    """
    from unclip.data.shapes import COLORS, FILLS, HELD_OUT, POSITIONS, SHAPES, SIZES, sample_scene

    values = {"shape": SHAPES, "color": COLORS, "size": SIZES, "fill": FILLS, "position": POSITIONS}
    for _ in range(tries):
        attrs = [dict(o.attributes()) for o in spec.objects]
        k = int(rng.integers(len(attrs)))
        attr = list(values)[int(rng.integers(len(values)))]
        options = [v for v in values[attr] if v != attrs[k][attr]]
        attrs[k][attr] = options[int(rng.integers(len(options)))]
        if attr == "position" and sum(a["position"] == attrs[k]["position"] for a in attrs) > 1:
            continue
        held = any(
            (rule.background in (None, spec.background))
            and any(all(a.get(key) == v for key, v in rule.object_attributes().items()) for a in attrs)
            for rule in HELD_OUT
        )
        if held:
            continue
        try:
            return sample_scene(rng, "any", objects=attrs, background=spec.background, max_tries=100)
        except ValueError:
            continue
    return None


def edit_background(spec: Any, rng: np.random.Generator) -> Any | None:
    """The scene on another background (objects, texture and layout untouched), or None if every
    other background would make it a held-out combination."""
    from unclip.data.shapes import BACKGROUNDS, is_held_out
    from unclip.data.shapes.scene import sample_hsv
    from unclip.data.shapes.vocab import BACKGROUND_HSV

    options = [b for b in BACKGROUNDS if b != spec.background]
    rng.shuffle(options)
    for bg in options:
        edited = dataclasses.replace(spec, background=bg, bg_rgb=sample_hsv(rng, BACKGROUND_HSV[bg]))
        if not is_held_out(edited):
            return edited
    return None


def counterfactual_pair(
    item: dict[str, Any], seed: int, size: int, background_edits: float = 0.0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stream item and its edited twin (see :class:`ShapesBatches`); a fresh scene if no edit fits.

    A background edit (probability ``background_edits``) re-captions the item so that both
    captions name their background.
    """
    from unclip.data.shapes import SceneSpec, caption, sample_scene
    from unclip.data.shapes.stream import image_tensor

    rng = np.random.default_rng([seed, int(item["index"]), 1])
    spec = SceneSpec.from_dict(item["spec"])
    on_background = (
        background_edits > 0
        and np.random.default_rng([seed, int(item["index"]), 2]).uniform() < background_edits
    )
    twin = edit_background(spec, rng) if on_background else edit_scene(spec, rng)
    if twin is None:
        on_background = False
        twin = sample_scene(rng, "train")
    if on_background:
        item = {
            **item,
            "caption": caption(
                spec, np.random.default_rng([seed, int(item["index"]), 3]), with_background=True
            ),
        }
    edited = {
        "image": image_tensor(twin, size),
        "caption": caption(twin, rng, with_background=on_background),
        "spec": twin.to_dict(),
        "index": -1,
    }
    return item, edited


# --------------------------------------------------------------------------- specs
def parse_size(spec: str, default: int) -> int:
    """``name:SIZE`` -> SIZE (or ``default``)."""
    if ":" not in spec:
        return default
    tail = spec.split(":", 1)[1]
    if not tail.isdigit() or int(tail) < 1:
        raise UserError(f"bad data spec {spec!r}: expected NAME:SIZE with a positive integer size")
    return int(tail)


def describe_data(spec: str) -> str:
    """'shapes', 'synthetic', 'emoji', 'wds' or 'folder' (raises UserError if it names nothing)."""
    name = spec.split(":", 1)[0]
    if name in ("shapes", "synthetic") and not os.path.exists(spec):
        return name
    if any(c in spec for c in "*?[{"):
        return "wds"
    p = Path(spec)
    if p.is_file() and p.suffix == ".tar":
        return "wds"
    if not p.exists():
        raise UserError(f"data not found: {spec} (expected shapes[:SIZE], synthetic[:N], a folder or shards)")
    if not p.is_dir():
        raise UserError(f"data {spec} is not a folder, a .tar shard or a known dataset name")
    if is_emoji_build(p):
        return "emoji"
    if glob.glob(os.path.join(glob.escape(spec), "*.tar")):
        return "wds"
    return "folder"


def open_data(
    spec: str, image_size: int, batch_size: int, seed: int = 0, num_workers: int = 0
) -> BatchStream:
    """Open a ``--data`` spec as a resumable training stream (see the module docstring).

    Args:
        spec: the data spec.
        image_size: side the images are resized/centre-cropped to (shapes render at ``shapes:SIZE``
            if given, else at this size).
        batch_size: samples per batch.
        seed: shuffling / stream seed.
        num_workers: worker processes loading (or, for the shapes world, rendering) batches.

    Raises:
        UserError: the spec names nothing usable.
    """
    kind = describe_data(spec)
    if kind == "shapes":
        return ShapesBatches(parse_size(spec, image_size), batch_size, seed=seed, num_workers=num_workers)
    if kind == "synthetic":
        n = parse_size(spec, 256)
        return MapBatches(SyntheticCaptions(n, image_size, seed=0), batch_size, seed=seed)
    if kind == "emoji":
        return MapBatches(EmojiPairs(spec, "train", image_size), batch_size, seed=seed)
    if kind == "wds":
        return ShardBatches(spec, image_size, batch_size, seed=seed, num_workers=num_workers)
    from unclip.data.folder import ImageCaptionFolder

    return MapBatches(
        ImageCaptionFolder(spec, size=image_size, seed=seed), batch_size, seed=seed, num_workers=num_workers
    )


def caption_corpus(spec: str, limit: int = 5000, seed: int = 0) -> list[str]:
    """Captions to train a tokenizer on: all of a finite dataset, or ``limit`` from a stream."""
    kind = describe_data(spec)
    if kind == "shapes":
        from unclip.data.shapes.stream import make_sample

        # Captions only (no rendering), from a seed the training stream does not use.
        return [make_sample(seed + 7919, i)[1] for i in range(limit)]
    if kind == "synthetic":
        ds = SyntheticCaptions(parse_size(spec, 256), 4)
        return [ds[i]["caption"] for i in range(len(ds))]
    if kind == "emoji":
        from unclip.data.emoji import iter_emoji_split

        return [c for s in iter_emoji_split(spec, "train") for c in s.captions]
    if kind == "folder":
        from unclip.data.folder import ImageCaptionFolder

        ds = ImageCaptionFolder(spec)
        return [c for i in range(len(ds)) for c in ds.captions(i)]
    stream = ShardBatches(spec, 8, 64, seed=seed + 1)
    out: list[str] = []
    while len(out) < limit:
        before = stream.ds.epoch
        out.extend(next(stream)["caption"])
        if stream.ds.epoch != before:
            break
    return out[:limit]


def iter_ordered(
    spec: str,
    image_size: int,
    batch_size: int,
    start: int = 0,
    limit: int | None = None,
    split: str = "train",
    seed: int = 0,
    num_workers: int = 0,
) -> Iterator[dict[str, Any]]:
    """Batches of a dataset in a fixed order, once, from sample ``start`` (for ``unclip embed``).

    Each batch has ``image`` (B, 3, S, S), ``caption`` and ``key`` (B strings, unique per sample)
    and, for the shapes world, ``spec`` (B scene dicts).

    Args:
        spec: a ``--data`` spec; the shapes world is infinite, so it needs ``limit``.
        image_size: side images are resized/centre-cropped to.
        batch_size: samples per batch (the last may be smaller).
        start: samples to skip (already embedded by an interrupted job).
        limit: stop after this many samples in total (counting the skipped ones).
        split: emoji build split ("train", "val", ...) or shapes split ("train", "heldout").
        seed: shapes stream seed.
        num_workers: worker processes rendering shapes-world batches ahead (0: render here).
    """
    kind = describe_data(spec)
    if kind == "shapes":
        if limit is None:
            raise UserError("the shapes world is endless: give the number of samples to embed (--limit N)")
        make = _OrderedShapes(parse_size(spec, image_size), seed, split, batch_size, limit)
        yield from ordered_map(make, range(start, limit, batch_size), num_workers)
        return
    if kind == "wds":
        from unclip.data.wds import WebDatasetShards

        ds = WebDatasetShards(
            spec,
            size=image_size,
            fields={"image": "jpg;jpeg;png;webp", "caption": "txt"},
            shuffle_buffer=0,
            shuffle_shards=False,
        )
        buf: list[dict[str, Any]] = []
        for i, sample in enumerate(ds):
            if limit is not None and i >= limit:
                break
            if i < start:
                continue
            buf.append({"image": sample["image"], "caption": sample["caption"], "key": sample["__key__"]})
            if len(buf) == batch_size:
                yield collate(buf)
                buf = []
        if buf:
            yield collate(buf)
        return
    if kind == "synthetic":
        ds: Any = SyntheticCaptions(parse_size(spec, 256), image_size)
    elif kind == "emoji":
        ds = EmojiPairs(spec, split, image_size, first_caption_only=True)
    else:
        from unclip.data.folder import ImageCaptionFolder

        ds = ImageCaptionFolder(spec, size=image_size, caption_choice="first")
    end = len(ds) if limit is None else min(limit, len(ds))
    for b in range(start, end, batch_size):
        items = []
        for i in range(b, min(b + batch_size, end)):
            item = dict(ds[i])
            item.setdefault("key", f"{i:09d}")
            item.pop("index", None)
            items.append(item)
        yield collate(items)
