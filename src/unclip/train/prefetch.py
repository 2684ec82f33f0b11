"""Compute a stream's batches in worker processes, in order.

The shapes world renders on the CPU (about 1,000 images/s per core at 32 px), which starves any
accelerator if the training process renders its own batches. Its batches are pure functions of a
stream position, so workers can compute batch ``k`` ahead of time and the stream stays exactly
resumable: :func:`ordered_map` hands the results back in key order, and a resumed stream restarts
the workers at its saved position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch


class _Keyed(torch.utils.data.Dataset):
    """``dataset[key] = fn(key)``: a DataLoader over arbitrary keys (no length needed)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __getitem__(self, key: Any) -> Any:
        return self.fn(key)


def ordered_map(
    fn: Callable[[Any], Any], keys: Iterable[Any], num_workers: int = 0, prefetch: int = 4
) -> Iterator[Any]:
    """``fn(key)`` for each of ``keys`` (may be endless), in order.

    Args:
        fn: a picklable function of one key (module-level, or an object with ``__call__``); it
            must not touch an accelerator, since it runs in worker processes.
        keys: the keys, in order.
        num_workers: worker processes; 0 computes each result here when it is asked for.
        prefetch: results each worker computes ahead.
    """
    if num_workers <= 0:
        return map(fn, keys)
    loader = torch.utils.data.DataLoader(
        _Keyed(fn),
        batch_size=None,  # each key is one whole result (a batch), already collated by fn
        sampler=keys,  # type: ignore[arg-type]
        num_workers=num_workers,
        prefetch_factor=prefetch,
    )
    return iter(loader)
