"""An in-memory store of generated images, addressed by random ids, that expire.

Ids are 128-bit random tokens (``secrets.token_urlsafe``): nothing a client sends ever names a
file, and an id is as good as a capability for its image. Entries expire after ``ttl_s`` seconds
and the oldest go first when the store holds more than ``max_bytes``.
"""

from __future__ import annotations

import collections
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


@dataclass
class StoredImage:
    """One PNG (with its ``unclip`` text chunk), its manifest record and the decoded image."""

    png: bytes
    record: dict[str, Any]
    image: Any
    expires: float


class ImageStore:
    """Thread-safe id -> :class:`StoredImage` with expiry and a byte budget."""

    def __init__(self, ttl_s: float = 3600.0, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.ttl_s, self.max_bytes = ttl_s, max_bytes
        self._items: collections.OrderedDict[str, StoredImage] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, png: bytes, record: dict[str, Any], image: Any) -> str:
        """Store an image; returns its new id."""
        key = secrets.token_urlsafe(16)
        with self._lock:
            self._expire()
            self._items[key] = StoredImage(png, record, image, time.monotonic() + self.ttl_s)
            self._bytes += len(png)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old.png)
        return key

    def get(self, key: str) -> StoredImage | None:
        """The image with this id, or None (unknown, malformed or expired)."""
        if not isinstance(key, str) or not ID_PATTERN.match(key):
            return None
        with self._lock:
            self._expire()
            return self._items.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._items:
            key, item = next(iter(self._items.items()))
            if item.expires > now:
                break
            del self._items[key]
            self._bytes -= len(item.png)
