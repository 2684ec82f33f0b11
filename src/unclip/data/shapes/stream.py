"""Serving the shapes world: one deterministic sample per global index, as a stream or as shards.

Sample ``i`` of seed ``s`` is drawn from ``numpy.random.default_rng([s, i])`` alone, so the
webdataset shards written by ``unclip data shapes`` and the in-memory :class:`ShapesStream` with the
same seed, split and caption mode produce the same scenes and captions; a stream resumes exactly
from a global index, and ranks/workers interleave indices without overlap.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from unclip.data.shapes.captions import CaptionMode, caption, describe
from unclip.data.shapes.render import render, render_array
from unclip.data.shapes.scene import SceneSpec, sample_scene
from unclip.data.shapes.vocab import HELD_OUT, VOCAB_VERSION, Split
from unclip.progress import progress


def make_sample(
    seed: int,
    index: int,
    split: Split = "train",
    caption_mode: CaptionMode = "mixed",
    num_objects: int | None = None,
    texture_prob: float = 0.3,
) -> tuple[SceneSpec, str]:
    """The scene and caption of global sample ``index`` for ``seed`` (pure function of its args)."""
    rng = np.random.default_rng([seed, index])
    spec = sample_scene(rng, split, num_objects, texture_prob=texture_prob)
    return spec, caption(spec, rng, caption_mode)


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    # Fixed metadata so the same arguments give byte-identical shards on any machine.
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_shards(
    out_dir: str | Path,
    num: int,
    sizes: Sequence[int] = (64,),
    seed: int = 0,
    split: Split = "train",
    shard_size: int = 1000,
    caption_mode: CaptionMode = "mixed",
    num_objects: int | None = None,
    texture_prob: float = 0.3,
) -> list[Path]:
    """Write ``num`` samples as webdataset tar shards ``out_dir/shapes-000000.tar``, ...

    Each sample has the key ``%09d`` of its global index and the members ``png`` (one size) or
    ``<size>.png`` (several sizes) and ``json`` (caption, canonical description, full spec, seed,
    index, split). Byte-identical for identical arguments. Also writes ``manifest.json``.

    Returns:
        The shard paths, in order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = list(sizes)
    paths: list[Path] = []
    bar = progress(total=num, desc="shapes", unit="img")
    for shard, start in enumerate(range(0, num, shard_size)):
        path = out / f"shapes-{shard:06d}.tar"
        tmp = path.with_suffix(".tar.tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(start, min(num, start + shard_size)):
                spec, text = make_sample(seed, index, split, caption_mode, num_objects, texture_prob)
                key = f"{index:09d}"
                for px in sizes:
                    ext = "png" if len(sizes) == 1 else f"{px}.png"
                    _tar_add(tar, f"{key}.{ext}", _png(render(spec, px)))
                meta = {
                    "caption": text,
                    "description": describe(spec),
                    "spec": spec.to_dict(),
                    "seed": seed,
                    "index": index,
                    "split": split,
                    "sizes": sizes,
                    "vocab_version": VOCAB_VERSION,
                }
                _tar_add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
                bar.update(1)
        os.replace(tmp, path)
        paths.append(path)
    bar.close()
    manifest = {
        "dataset": "shapes",
        "vocab_version": VOCAB_VERSION,
        "num": num,
        "sizes": sizes,
        "seed": seed,
        "split": split,
        "shard_size": shard_size,
        "caption_mode": caption_mode,
        "num_objects": num_objects,
        "texture_prob": texture_prob,
        "shards": [p.name for p in paths],
        "held_out": [r.name for r in HELD_OUT],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return paths


def image_tensor(spec: SceneSpec, size: int) -> torch.Tensor:
    """Render to a float tensor (3, size, size) in [-1, 1] (quantised to 8 bits like a PNG)."""
    arr = np.rint(render_array(spec, size) * 255.0) * np.float32(2.0 / 255.0) - np.float32(1.0)
    # Channels-first copy in numpy: torch's own permute+contiguous would wake its thread pool.
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


class ShapesStream(IterableDataset):
    """An endless stream of rendered, captioned scenes; nothing is written to disk.

    Each item is ``{"image": (3, size, size) float in [-1, 1], "caption": str, "spec": dict,
    "index": int}`` plus ``"image_<px>"`` for every size in ``extra_sizes`` (e.g. the 32 px input
    of an upsampler next to its 128 px target, rendered from the same spec). Use
    :func:`collate_shapes` as the DataLoader's ``collate_fn`` (specs differ in length).

    Args:
        size: image side in pixels.
        seed: stream seed; sample ``i`` equals sample ``i`` of ``unclip data shapes --seed``.
        split: "train", "heldout" or "any".
        caption_mode: see :func:`unclip.data.shapes.captions.caption`.
        num_objects: fix the number of objects (1-3), random when ``None``.
        extra_sizes: more renders of the same scene.
        start: first global index (to resume exactly where a run stopped).
        rank, world_size: this process's share; read from ``torch.distributed`` when ``None``.
        texture_prob: probability of a textured background.

    Global indices are interleaved: stream ``k`` of ``n = world_size * num_workers`` yields
    ``start + k, start + k + n, ...``, so no two workers or ranks ever produce the same sample.
    """

    def __init__(
        self,
        size: int = 64,
        seed: int = 0,
        split: Split = "train",
        caption_mode: CaptionMode = "mixed",
        num_objects: int | None = None,
        extra_sizes: Sequence[int] = (),
        start: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        texture_prob: float = 0.3,
    ) -> None:
        super().__init__()
        if size < 8 or any(s < 8 for s in extra_sizes):
            raise ValueError(f"image sizes must be >= 8, got {size} and {list(extra_sizes)}")
        self.size, self.seed, self.split = size, seed, split
        self.caption_mode, self.num_objects = caption_mode, num_objects
        self.extra_sizes = tuple(extra_sizes)
        self.start, self.rank, self.world_size = start, rank, world_size
        self.texture_prob = texture_prob

    def _share(self) -> tuple[int, int]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                rank = dist.get_rank() if rank is None else rank
                world = dist.get_world_size() if world is None else world
        rank, world = rank or 0, world or 1
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world * nw

    def item(self, index: int) -> dict[str, Any]:
        """Global sample ``index`` of this stream (whatever the process's share)."""
        spec, text = make_sample(
            self.seed, index, self.split, self.caption_mode, self.num_objects, self.texture_prob
        )
        item: dict[str, Any] = {
            "image": image_tensor(spec, self.size),
            "caption": text,
            "spec": spec.to_dict(),
            "index": index,
        }
        for px in self.extra_sizes:
            item[f"image_{px}"] = image_tensor(spec, px)
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        k, n = self._share()
        index = self.start + k
        while True:
            yield self.item(index)
            index += n


def collate_shapes(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep captions/specs/indices as lists (specs have 1-3 objects)."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
