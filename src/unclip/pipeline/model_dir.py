"""Whole models on disk: a directory of component directories plus a ``model.json`` index.

Layout (design.md §4)::

    DIR/model.json          {"format": "unclip-model", "format_version": 1,
                             "components": {"clip": {"kind": "clip", "path": "clip"}, ...},
                             "defaults": {...pipeline defaults...}, "info": {...free-form...}}
    DIR/clip/               a component directory (component.json + model.safetensors + tokenizer.json)
    DIR/prior/ ...          one per component, see :mod:`unclip.checkpoint`

Component names are fixed (:data:`COMPONENTS`); "clip" and "decoder" are required, the rest are
optional. The index, every component config and the pipeline defaults are read strictly: an
unknown key is an error, a newer format is refused, and pickles are never loaded. A *name*
instead of a directory resolves to a bundle: one registered with :func:`register_bundle`, or one
shipped inside the package at ``unclip/bundles/<name>/model.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from unclip.checkpoint import (
    _KINDS,
    _import_builtin_kinds,
    atomic_write_bytes,
    load_component,
    read_component_header,
    save_component,
)
from unclip.config import Config
from unclip.errors import UserError
from unclip.models.ar_prior import DEFAULT_AR_GUIDANCE
from unclip.models.prior import DEFAULT_GUIDANCE

MODEL_FORMAT = "unclip-model"
MODEL_FORMAT_VERSION = 1
INDEX_FILE = "model.json"

#: Component name -> the component kind it must hold. Upsamplers run in name order.
COMPONENTS: dict[str, str] = {
    "clip": "clip",
    "prior": "diffusion_prior",
    "prior_ar": "ar_prior",
    "decoder": "decoder",
    "upsampler1": "upsampler",
    "upsampler2": "upsampler",
}
#: Other kinds a component may hold: converted pretrained models (``unclip convert``) with the
#: same sampling interface as ours (see :mod:`unclip.models.karlo.stages`).
ALTERNATIVE_KINDS: dict[str, tuple[str, ...]] = {
    "clip": ("hf_clip",),
    "prior": ("karlo_prior",),
    "decoder": ("karlo_decoder",),
    "upsampler1": ("karlo_upsampler",),
    "upsampler2": ("karlo_upsampler",),
}


def allowed_kinds(name: str) -> tuple[str, ...]:
    """The component kinds the component ``name`` may hold (ours first)."""
    return (COMPONENTS[name], *ALTERNATIVE_KINDS.get(name, ()))


REQUIRED = ("clip", "decoder")
_INDEX_KEYS = {"format", "format_version", "components", "defaults", "info"}
_ENTRY_KEYS = {"kind", "path"}

BUNDLE_DIR = Path(__file__).resolve().parent.parent / "bundles"
_BUNDLES: dict[str, Path] = {}


@dataclasses.dataclass(frozen=True)
class PipelineDefaults(Config):
    """Sampling settings a model ships with (``model.json`` "defaults"); the pipeline's
    arguments override them per call. Sampling options, never weights (style.md §2).

    Attributes:
        prior: which prior prompts go through ("diffusion" or "ar").
        prior_steps: strided DDIM steps of the diffusion prior (paper Tab. 3: 64).
        prior_guidance_scale: prior classifier-free guidance (not reported in the paper;
            2 measured best on the shapes suite, docs/priors.md).
        prior_best_of: candidates per sample kept by dot product with text_emb (paper §2.2: 2).
        ar_guidance_scale: guidance of the AR prior's logits (4 measured best, docs/priors.md).
        decoder_steps: decoder DDIM steps (paper: 250; fewer on CPU).
        decoder_guidance_scale: decoder classifier-free guidance (the decoder's own default).
        upsampler_steps: DDIM steps per upsampler, in order (paper Tab. 3: 27, 15).
        decoder_sampler: the decoder's sampler ("ddim"; converted Karlo models: "ddpm", the
            reference's ancestral sampler).
        upsampler_sampler: the upsamplers' sampler.
    """

    prior: Literal["diffusion", "ar"] = "diffusion"
    prior_steps: int = 64
    prior_guidance_scale: float = DEFAULT_GUIDANCE
    prior_best_of: int = 2
    ar_guidance_scale: float = DEFAULT_AR_GUIDANCE
    decoder_steps: int = 50
    decoder_guidance_scale: float = 3.0
    upsampler_steps: tuple[int, ...] = (27, 15)
    decoder_sampler: str = "ddim"
    upsampler_sampler: str = "ddim"

    def __post_init__(self) -> None:
        from unclip.sampling import list_samplers

        for name in ("decoder_sampler", "upsampler_sampler"):
            if getattr(self, name) not in list_samplers():
                raise ValueError(
                    f"{name} must be one of {', '.join(list_samplers())}, got {getattr(self, name)!r}"
                )
        for name in ("prior_steps", "decoder_steps", "prior_best_of"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if any(s < 1 for s in self.upsampler_steps):
            raise ValueError("upsampler_steps must be >= 1")
        for name in ("prior_guidance_scale", "ar_guidance_scale", "decoder_guidance_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    def prior_settings(
        self, prior: str | None = None, steps: int | None = None, guidance: float | None = None
    ) -> dict[str, Any]:
        """The prior part of a generate job, ``None`` taking these defaults:
        ``{"prior", "prior_steps" (None for the AR prior), "prior_guidance"}``."""
        prior = prior or self.prior
        default_guidance = self.ar_guidance_scale if prior == "ar" else self.prior_guidance_scale
        return {
            "prior": prior,
            "prior_steps": None if prior == "ar" else (steps or self.prior_steps),
            "prior_guidance": default_guidance if guidance is None else guidance,
        }


# ---------------------------------------------------------------------------- bundles


def register_bundle(name: str, path: str | Path) -> None:
    """Make ``name`` resolve to the model directory ``path`` (registered names win over shipped ones)."""
    p = Path(path)
    if not (p / INDEX_FILE).is_file():
        raise UserError(f"cannot register bundle {name!r}: no {INDEX_FILE} in {p}")
    _BUNDLES[name] = p


def list_bundles() -> list[str]:
    """Names that :func:`resolve_model` accepts: registered and shipped bundles."""
    shipped = {p.parent.name for p in BUNDLE_DIR.glob(f"*/{INDEX_FILE}")} if BUNDLE_DIR.is_dir() else set()
    return sorted(shipped | set(_BUNDLES))


def resolve_model(name_or_dir: str | Path) -> Path:
    """A model directory for a directory path or a bundle name.

    Raises:
        UserError: neither a directory nor a known bundle (the message lists the bundles).
    """
    p = Path(name_or_dir)
    if p.is_dir():
        return p
    name = str(name_or_dir)
    if name in _BUNDLES:
        return _BUNDLES[name]
    shipped = BUNDLE_DIR / name
    if "/" not in name and (shipped / INDEX_FILE).is_file():
        return shipped
    known = ", ".join(list_bundles()) or "none installed"
    raise UserError(f"no model directory or bundle named {name!r}; known bundles: {known}")


# ---------------------------------------------------------------------------- index


def _kind_of(module: nn.Module) -> str:
    """The registered component kind whose config class built ``module``."""
    _import_builtin_kinds()
    config = getattr(module, "config", None)
    for kind, spec in _KINDS.items():
        if config is not None and type(config) is spec.config_cls:
            return kind
    raise UserError(f"cannot save {type(module).__name__}: not a registered component kind")


def read_index(directory: str | Path) -> dict[str, Any]:
    """Read and validate ``model.json`` (layout, names, kinds, version, defaults).

    Returns:
        The index dict with "defaults" replaced by a :class:`PipelineDefaults`.
    """
    directory = Path(directory)
    path = directory / INDEX_FILE
    if not path.is_file():
        raise UserError(f"not an unclip model directory (no {INDEX_FILE}): {directory}")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt {path}: {e}") from None
    if not isinstance(index, dict):
        raise UserError(f"corrupt {path}: expected a JSON object")
    unknown = sorted(set(index) - _INDEX_KEYS)
    if unknown:
        raise UserError(
            f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(_INDEX_KEYS))}"
        )
    if index.get("format") != MODEL_FORMAT:
        raise UserError(f"{path}: format is {index.get('format')!r}, expected {MODEL_FORMAT!r}")
    version = index.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{path}: format_version must be a positive integer, got {version!r}")
    if version > MODEL_FORMAT_VERSION:
        raise UserError(
            f"{path} has format version {version}, made by a newer unclip (this one reads up to "
            f"{MODEL_FORMAT_VERSION}); upgrade unclip"
        )
    comps = index.get("components")
    if not isinstance(comps, dict):
        raise UserError(f"{path}: 'components' must be an object")
    for name, entry in comps.items():
        if name not in COMPONENTS:
            raise UserError(f"{path}: unknown component {name!r}; valid names: {', '.join(COMPONENTS)}")
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            raise UserError(f"{path}: component {name!r} must be an object with exactly the keys kind, path")
        if entry["kind"] not in allowed_kinds(name):
            raise UserError(
                f"{path}: component {name!r} must be of kind {' or '.join(map(repr, allowed_kinds(name)))}, "
                f"got {entry['kind']!r}"
            )
        sub = entry["path"]
        if not isinstance(sub, str) or not sub or Path(sub).is_absolute() or ".." in Path(sub).parts:
            raise UserError(f"{path}: component {name!r} path must be a relative folder inside the model")
    missing = [n for n in REQUIRED if n not in comps]
    if missing:
        raise UserError(f"{path}: missing required component(s) {', '.join(missing)}")
    if "upsampler2" in comps and "upsampler1" not in comps:
        raise UserError(f"{path}: upsampler2 without upsampler1")
    defaults = index.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise UserError(f"{path}: 'defaults' must be an object")
    index = dict(index, defaults=PipelineDefaults.from_dict(defaults, _where=f"{path} defaults"))
    if not isinstance(index.get("info", {}), dict):
        raise UserError(f"{path}: 'info' must be an object")
    return index


def save_model(
    directory: str | Path,
    components: dict[str, nn.Module],
    defaults: PipelineDefaults | dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save components as a model directory (``model.json`` written last).

    Args:
        directory: output folder (created).
        components: name (see :data:`COMPONENTS`) -> module; "clip" and "decoder" required.
        defaults: pipeline defaults stored in the index (validated).
        info: free-form JSON-able provenance (training runs, dataset, ...).
        dtype: storage dtype of floating weights (e.g. ``torch.bfloat16`` for bundles).

    Returns:
        The directory.
    """
    directory = Path(directory)
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise UserError(
            f"unknown component name(s) {', '.join(unknown)}; valid names: {', '.join(COMPONENTS)}"
        )
    missing = [n for n in REQUIRED if n not in components]
    if missing:
        raise UserError(f"a model needs the component(s) {', '.join(missing)}")
    if isinstance(defaults, dict):
        defaults = PipelineDefaults.from_dict(defaults)
    entries = {}
    for name, module in components.items():
        kind = _kind_of(module)
        if kind not in allowed_kinds(name):
            raise UserError(
                f"component {name!r} must be of kind {' or '.join(map(repr, allowed_kinds(name)))}, got {kind!r}"
            )
        if kind in ("clip", "hf_clip"):
            module.save(directory / name, dtype=dtype)  # also writes the tokenizer's files
        else:
            save_component(module, module.config, kind, directory / name, dtype=dtype)
        entries[name] = {"kind": kind, "path": name}
    index: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "components": entries,
    }
    if defaults is not None:
        index["defaults"] = defaults.to_dict()
    if info:
        index["info"] = info
    atomic_write_bytes(directory / INDEX_FILE, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
    return directory


def load_model(
    name_or_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """Load every component of a model directory or bundle.

    Returns:
        (name -> module in eval mode, the validated index with "defaults" a PipelineDefaults).

    Raises:
        UserError: any problem with the index or a component (one line).
    """
    from unclip.clip.model import attach_tokenizer_from

    directory = resolve_model(name_or_dir)
    index = read_index(directory)
    modules: dict[str, nn.Module] = {}
    for name, entry in index["components"].items():
        sub = directory / entry["path"]
        if not sub.is_dir():
            raise UserError(f"{directory / INDEX_FILE}: component {name!r} folder not found: {sub}")
        header = read_component_header(sub)
        if header["kind"] != entry["kind"]:
            raise UserError(
                f"{sub} holds a {header['kind']!r} component, but model.json says {entry['kind']!r}"
            )
        module, _config, _header = load_component(sub, device=device)
        if header["kind"] == "clip":
            module = attach_tokenizer_from(module, sub)
        elif header["kind"] == "hf_clip":
            module = module.attach_tokenizer_from(sub)
        modules[name] = module.requires_grad_(False)
    return modules, index
