"""`unclip inspect MODEL`: what a model directory or bundle holds, without loading its weights.

Prints the index format version, each component (kind, folder, format version, parameter count,
storage dtype, config) and the pipeline defaults; ``--json`` prints the same as one JSON object.
Parameter counts are read from the safetensors headers: every stored value (persistent buffers
included, which are small next to the weights).
"""

from __future__ import annotations

import argparse
import json
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from unclip.errors import UserError

_MAX_HEADER = 100 * 1024 * 1024


def safetensors_summary(path: Path) -> dict[str, Any]:
    """Tensor count, value count, dtypes and file size of a safetensors file (header only)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > _MAX_HEADER:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as e:
        raise UserError(f"cannot read weights {path}: {e}") from None
    values, dtypes, tensors = 0, Counter(), 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for d in meta["shape"]:
            count *= int(d)
        values += count
        dtypes[meta["dtype"]] += count
        tensors += 1
    return {
        "parameters": values,
        "tensors": tensors,
        "dtype": dtypes.most_common(1)[0][0] if dtypes else None,
        "bytes": path.stat().st_size,
    }


def inspect_model(name_or_dir: str) -> dict[str, Any]:
    """A JSON-able description of a model directory or bundle."""
    from unclip.checkpoint import WEIGHTS_FILE, read_component_header
    from unclip.pipeline import read_index, resolve_model

    directory = resolve_model(name_or_dir)
    index = read_index(directory)
    comps: dict[str, Any] = {}
    for name, entry in index["components"].items():
        sub = directory / entry["path"]
        header = read_component_header(sub)
        comps[name] = {
            "kind": header["kind"],
            "path": entry["path"],
            "format_version": header["format_version"],
            **safetensors_summary(sub / header.get("weights", WEIGHTS_FILE)),
            "config": header["config"],
        }
    return {
        "model": str(name_or_dir),
        "dir": str(Path(directory).resolve()),
        "format": index["format"],
        "format_version": index["format_version"],
        "components": comps,
        "total_parameters": sum(c["parameters"] for c in comps.values()),
        "defaults": index["defaults"].to_dict(),
        "info": index.get("info", {}),
    }


def _human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def format_report(d: dict[str, Any], configs: bool = True) -> str:
    """The text ``unclip inspect`` prints."""
    lines = [
        f"model: {d['model']}",
        f"directory: {d['dir']}",
        f"format: {d['format']} version {d['format_version']}",
        f"parameters: {d['total_parameters']:,} ({_human(d['total_parameters'])})",
        "components:",
    ]
    for name, c in d["components"].items():
        lines.append(
            f"  {name:<11} kind={c['kind']:<16} params={c['parameters']:>12,} ({_human(c['parameters'])})"
            f"  dtype={c['dtype']}  format_version={c['format_version']}  path={c['path']}/"
        )
        if configs:
            lines.append(f"    config: {json.dumps(c['config'], sort_keys=True)}")
    lines.append("defaults:")
    lines += [f"  {k}: {v}" for k, v in d["defaults"].items()]
    if d["info"]:
        lines.append(f"info: {json.dumps(d['info'], sort_keys=True)}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    report = inspect_model(args.model)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(format_report(report, configs=not args.brief))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a model's components, configs, parameter counts and defaults",
        description="Reads model.json and each component's header; loads no weights.",
    )
    p.add_argument("model", metavar="MODEL", help="bundle name or model directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--brief", action="store_true", help="leave out the component configs")
    p.set_defaults(func=_run)
