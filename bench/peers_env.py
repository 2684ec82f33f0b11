"""Create the peer libraries' own virtual environment for side-by-side benchmarks.

The peers (dalle2-pytorch, diffusers' unCLIP parts) never go into the project's ``.venv``: they
live in ``.bench-venv/`` at the repository root, which this script creates if missing::

    python bench/peers_env.py [--venv PATH] [--force]

It installs ``torch==2.13.0`` (the CPU wheel on this machine kind; every pip call is pinned to it
with a constraints file, since an unpinned resolve pulls a multi-GB CUDA build), then
``dalle2-pytorch``, ``diffusers``, ``transformers`` and ``setuptools<81`` (``clip`` needs
``pkg_resources``). The registry's torchvision is a CUDA build whose compiled ops fail to load
beside CPU torch (``operator torchvision::nms does not exist``); the peers only use its Python
transforms, so ``torchvision/_meta_registrations.py`` in that venv is replaced by an empty module.
Finally ``import torchvision, dalle2_pytorch, diffusers`` is checked and a marker file written;
a later run with the marker present does nothing. Runs with any Python 3 (stdlib only); exits
non-zero with one ``peers_env: error: ...`` line on failure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = ROOT / ".bench-venv"
TORCH_PIN = "torch==2.13.0"
PEERS = ("dalle2-pytorch", "diffusers", "transformers", "setuptools<81")
MARKER = ".peers-ready.json"
CHECK = (
    "import json, torch, torchvision, dalle2_pytorch, diffusers, transformers;"
    "from importlib.metadata import version as v;"
    "print(json.dumps({n: v(n) for n in ('torch', 'torchvision', 'dalle2-pytorch', 'diffusers', 'transformers')}))"
)


class EnvError(RuntimeError):
    """A step failed; the message is the one line printed."""


def venv_python(path: Path) -> Path:
    return path / "bin" / "python"


def spec() -> dict:
    """What a ready venv holds; a marker with other contents is rebuilt."""
    return {"torch": TORCH_PIN, "packages": list(PEERS), "patch": "torchvision/_meta_registrations.py"}


def is_ready(path: Path = DEFAULT_VENV) -> bool:
    marker = path / MARKER
    if not marker.is_file() or not venv_python(path).exists():
        return False
    try:
        return json.loads(marker.read_text()).get("spec") == spec()
    except (OSError, ValueError):
        return False


def base_python() -> str:
    """The interpreter to build the venv from: this one, unless the project venv was made with
    another Python version, whose CPU torch wheel is the one on disk (``torch==2.13.0`` for
    another version would come from the registry, as a CUDA build)."""
    cfg = ROOT / ".venv" / "pyvenv.cfg"
    try:
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (ln.partition("=") for ln in cfg.read_text().splitlines())
        )
    except OSError:
        return sys.executable
    want = fields.get("version", "").split(".")[:2]
    exe = fields.get("executable")
    if want and want != [str(x) for x in sys.version_info[:2]] and exe and Path(exe).exists():
        return exe
    return sys.executable


def _run(cmd: list[str], what: str, quiet: bool) -> str:
    print(f"peers_env: {what}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        raise EnvError(f"{what} failed (exit {proc.returncode}): {tail[0]}")
    if not quiet and proc.stdout.strip():
        last = proc.stdout.strip().splitlines()[-1]
        print(f"peers_env:   {last}", flush=True)
    return proc.stdout


def _patch_torchvision(py: Path, quiet: bool) -> None:
    out = _run(
        [
            str(py),
            "-c",
            "import importlib.util as u; print(u.find_spec('torchvision').submodule_search_locations[0])",
        ],
        "locating torchvision",
        quiet=True,
    )
    target = Path(out.strip().splitlines()[-1]) / "_meta_registrations.py"
    if not target.exists():
        raise EnvError(f"{target} not found: torchvision's layout changed; check peers.md's workaround")
    print(f"peers_env: replacing {target} with an empty module (CPU torch + CUDA torchvision workaround)")
    target.write_text('"""Emptied by bench/peers_env.py: its CUDA ops do not load beside CPU torch."""\n')


def ensure(path: Path = DEFAULT_VENV, force: bool = False, quiet: bool = False) -> Path:
    """Make the peer venv ready (idempotent) and return its python."""
    path = Path(path).resolve()
    project_venv = (ROOT / ".venv").resolve()
    if path == project_venv or project_venv in path.parents:
        raise EnvError(f"refusing to install peers into the project's own venv ({project_venv})")
    py = venv_python(path)
    if not force and is_ready(path):
        if not quiet:
            print(f"peers_env: {path} is ready (marker {MARKER}); nothing to do")
        return py
    (path / MARKER).unlink(missing_ok=True)
    if not py.exists():
        base = base_python()
        print(f"peers_env: creating venv {path} (from {base})", flush=True)
        try:
            if base == sys.executable:
                venv.EnvBuilder(with_pip=True, clear=False).create(path)
            else:
                subprocess.run([base, "-m", "venv", str(path)], check=True, capture_output=True, text=True)
        except Exception as exc:  # one clear line is the contract
            raise EnvError(f"could not create venv {path}: {exc}") from exc
    constraints = path / "constraints.txt"
    constraints.write_text(TORCH_PIN + "\n")
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-c", str(constraints)]
    _run([*pip, TORCH_PIN], f"installing {TORCH_PIN} (CPU wheel)", quiet)
    _run([*pip, *PEERS], f"installing {', '.join(PEERS)} with torch pinned", quiet)
    _patch_torchvision(py, quiet)
    out = _run([str(py), "-c", CHECK], "checking import torchvision, dalle2_pytorch, diffusers", quiet=True)
    versions = json.loads(out.strip().splitlines()[-1])
    if not versions["torch"].startswith("2.13.0"):
        raise EnvError(f"the peer venv has torch {versions['torch']}, expected {TORCH_PIN}")
    (path / MARKER).write_text(json.dumps({"spec": spec(), "versions": versions}, indent=1) + "\n")
    print("peers_env: ready: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return py


def versions(path: Path = DEFAULT_VENV) -> dict:
    """Package versions recorded in the marker ({} if not ready)."""
    try:
        return json.loads((Path(path) / MARKER).read_text()).get("versions", {})
    except (OSError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="where (default: .bench-venv)")
    parser.add_argument("--force", action="store_true", help="reinstall even if the marker is present")
    args = parser.parse_args(argv)
    try:
        ensure(args.venv, force=args.force)
    except EnvError as exc:
        print(f"peers_env: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
