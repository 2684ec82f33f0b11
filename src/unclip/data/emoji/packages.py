"""Where the emoji sources live: the cache directory, pinned npm tarballs, licence texts.

npm tarballs are read in place (never unpacked) from ``<cache>/emoji/npm``, so the bytes used are
exactly the bytes whose sha256 was checked.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unclip.errors import UserError

INSTALL_SCRIPT = "bash scripts/install_emoji_sources.sh"


def cache_dir() -> Path:
    """The project cache (``$UNCLIP_CACHE``, default ``~/.cache/unclip``)."""
    return Path(os.environ.get("UNCLIP_CACHE") or "~/.cache/unclip").expanduser()


def emoji_dir(cache: str | Path | None = None) -> Path:
    """Where emoji sources and builds live: ``<cache>/emoji``."""
    return (Path(cache).expanduser() if cache else cache_dir()) / "emoji"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class NpmPackage:
    """An npm tarball fetched with ``npm pack`` into ``<cache>/emoji/npm``, pinned by sha256."""

    name: str
    version: str
    sha256: str

    @property
    def tarball(self) -> str:
        """The file name ``npm pack`` writes, e.g. ``lobehub-fluent-emoji-3d-1.1.0.tgz``."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"

    def locate(self, cache: str | Path | None, what: str, style: str) -> Path:
        """Path of the verified tarball.

        Raises:
            UserError: If it is missing or its sha256 is not the pinned one.
        """
        npm = emoji_dir(cache) / "npm"
        path = npm / self.tarball
        install = (
            f"{INSTALL_SCRIPT} {style} (or: npm pack {self.name}@{self.version} --pack-destination {npm})"
        )
        if not path.is_file():
            raise UserError(f"{what} not found ({path}); install it with: {install}")
        digest = sha256_file(path)
        if digest != self.sha256:
            raise UserError(
                f"{path} has sha256 {digest[:12]}..., not the pinned one; delete it and run: {install}"
            )
        return path

    def provenance(self) -> dict[str, str]:
        return {"package": f"npm {self.name}@{self.version}", "file": self.tarball, "sha256": self.sha256}


EMOJIBASE = NpmPackage(
    "emojibase-data", "17.0.0", "d01d0e2ca4e22cb402679532155342c71e2e871f25c32223c013b8b166ebdf5a"
)
FLUENT_FLAT = NpmPackage(
    "@iconify-json/fluent-emoji-flat",
    "1.2.6",
    "7d064769dee690815f823bc5bcc511d957198caf9f5edd8dd9c1aa48a6aeb175",
)
FLUENT_3D = NpmPackage(
    "@lobehub/fluent-emoji-3d", "1.1.0", "c1bb7eee7de090205a232518a9ab4adb3df458bfbe8a1f78232991194c8b2e58"
)
OPENMOJI = NpmPackage(
    "openmoji", "17.0.0", "55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68"
)


def emojibase_path(cache: str | Path | None = None) -> Path:
    """The verified emojibase-data tarball (captions for every style)."""
    return EMOJIBASE.locate(cache, "emoji captions (npm emojibase-data)", "captions")


def read_tar(path: Path, keep: Callable[[str], bool]) -> dict[str, bytes]:
    """All regular members of a .tgz whose name passes ``keep``, read into memory."""
    out: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if member.isfile() and keep(member.name):
                f = tar.extractfile(member)
                if f is not None:
                    out[member.name] = f.read()
    return out


MIT_TEXT = """Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES
OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def captions_license_text(cache: str | Path | None = None) -> str:
    """Licence of the captions (emojibase's MIT licence; its names come from Unicode CLDR)."""
    raw = read_tar(emojibase_path(cache), lambda n: n == "package/LICENSE")
    return raw.get("package/LICENSE", b"MIT License").decode()
