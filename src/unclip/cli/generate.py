"""`unclip generate`: prompts -> images, and the machinery every image-writing command shares.

Each image-writing command turns its arguments into *jobs*: one pipeline call each, described
by a JSON-able dict holding every setting (inputs, seed, steps, guidance, size, precision) with
the model's defaults already filled in. A job's images are written as PNGs whose ``unclip`` text
chunk and manifest entry hold ``{"command", "job", "index", "seed", "model", "unclip_version"}``;
``unclip generate --from-manifest`` runs the job again and writes the same bytes.
"""

from __future__ import annotations

import argparse
import copy
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unclip import __version__
from unclip.cli import outputs as O
from unclip.errors import UserError

if TYPE_CHECKING:
    from unclip.pipeline import UnCLIPPipeline

DEFAULT_MODEL = "shapes"
MAX_SEED = 2**62 - 1
Runner = Callable[["UnCLIPPipeline", dict[str, Any], Any], list[Any]]


# ---------------------------------------------------------------------------- progress


class StageBars:
    """``callback(stage, step, total)`` drawing one progress bar per stage (silent when quiet).

    It also times the stages: the wall time between two callbacks is charged to the stage of the
    second, so a stage's time includes its set-up (the prior's includes encoding the prompts).
    """

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar: Any = None
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def restart_clock(self) -> None:
        """Start charging from now (call before each job)."""
        self._last = time.perf_counter()

    def __call__(self, stage: str, step: int, total: int) -> None:
        from unclip.progress import progress

        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now
        if stage != self.stage or self.bar is None or step < self.bar.n:
            self.close()
            self.stage = stage
            self.bar = progress(total=total, desc=stage, unit="step")
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ---------------------------------------------------------------------------- shared options


def add_model_args(p: argparse.ArgumentParser, prompts: bool = True) -> None:
    """--model, --seed, --size, --precision, decoder/upsampler steps and guidance (+ --truncate)."""
    p.add_argument(
        "--model", metavar="NAME|DIR", help=f"bundle name or model directory (default: {DEFAULT_MODEL})"
    )
    p.add_argument("--seed", type=int, help="base seed (default: a random one, recorded in the manifest)")
    p.add_argument("--size", type=int, metavar="PX", help="output side; picks how many upsamplers run")
    p.add_argument("--decoder-steps", type=int, metavar="K", help="decoder DDIM steps (1-1000)")
    p.add_argument("--upsampler-steps", type=int, metavar="K", help="DDIM steps of every upsampler")
    p.add_argument("--decoder-guidance", type=float, metavar="G", help="decoder guidance scale")
    p.add_argument("--precision", choices=["bf16", "fp32"], help="autocast precision (default: bf16)")
    if prompts:
        p.add_argument(
            "--truncate",
            action="store_true",
            help="allow prompts over the CLIP token limit (cut, with a warning)",
        )


def add_out_arg(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--out", default=f"outputs/{command}", help=f"output folder (default: outputs/{command})")


def check_common(args: argparse.Namespace) -> None:
    """Range checks of the shared options and the model name (before anything is written)."""
    from unclip.pipeline import resolve_model

    O.check_int_range("--seed", args.seed, 0, MAX_SEED)
    O.check_steps(decoder_steps=args.decoder_steps, upsampler_steps=args.upsampler_steps)
    O.check_float_range("--decoder-guidance", args.decoder_guidance, 0.0, O.MAX_GUIDANCE)
    if args.size is not None and args.size < 1:
        raise UserError(f"--size must be a positive number of pixels, got {args.size}")
    resolve_model(args.model or DEFAULT_MODEL)  # UserError naming the known bundles


def pick_seed(seed: int | None) -> int:
    return secrets.randbelow(2**31) if seed is None else seed


# ---------------------------------------------------------------------------- the model


def load_pipeline(model: str | None) -> tuple[UnCLIPPipeline, dict[str, Any]]:
    """Load a model; returns (pipeline, its manifest record: name, directory, defaults)."""
    from unclip.pipeline import UnCLIPPipeline, resolve_model

    name = model or DEFAULT_MODEL
    directory = resolve_model(name)  # UserError naming the known bundles
    pipe = UnCLIPPipeline.from_pretrained(directory)
    record = {"name": name, "dir": str(Path(directory).resolve()), "defaults": pipe.defaults.to_dict()}
    return pipe, record


def valid_sizes(pipe: UnCLIPPipeline) -> list[int]:
    """Sides the model can produce: the decoder's, then after each upsampler."""
    sizes = [pipe.decoder.config.image_size]
    for up in pipe.upsamplers:
        sizes.append(sizes[-1] * up.config.scale)
    return sizes


def resolve_size(pipe: UnCLIPPipeline, size: int | None) -> int:
    sizes = valid_sizes(pipe)
    if size is None:
        return sizes[-1]
    if size not in sizes:
        raise UserError(
            f"this model cannot make {size} px images; valid --size values: {', '.join(map(str, sizes))}"
        )
    return size


def at_size(pipe: UnCLIPPipeline, size: int) -> UnCLIPPipeline:
    """A shallow copy of ``pipe`` that runs only the upsamplers needed to reach ``size``."""
    stages = valid_sizes(pipe).index(size)
    if stages == len(pipe.upsamplers):
        return pipe
    trimmed = copy.copy(pipe)
    trimmed.upsamplers = pipe.upsamplers[:stages]
    return trimmed


def decoder_settings(pipe: UnCLIPPipeline, args: argparse.Namespace, size: int) -> dict[str, Any]:
    """The resolved decoder/upsampler/size/precision settings of a job."""
    from unclip.nn.precision import default_precision

    d = pipe.defaults
    stages = valid_sizes(pipe).index(size)
    fallback = d.upsampler_steps or (27,)
    ups = [args.upsampler_steps or fallback[min(i, len(fallback) - 1)] for i in range(stages)]
    return {
        "decoder_steps": args.decoder_steps or d.decoder_steps,
        "decoder_guidance": d.decoder_guidance_scale
        if args.decoder_guidance is None
        else args.decoder_guidance,
        "upsampler_steps": ups,
        "size": size,
        "precision": args.precision or default_precision(pipe.device),
    }


def check_prompts_fit(pipe: UnCLIPPipeline, prompts: list[str], truncate: bool) -> None:
    """Refuse prompts over the CLIP's token limit unless ``--truncate``."""
    tok = getattr(pipe.clip, "tokenizer", None)
    O.check_prompt_lengths(prompts, getattr(tok, "num_tokens", None), pipe.clip.max_text_len, truncate)


# ---------------------------------------------------------------------------- running jobs


def runners() -> dict[str, Runner]:
    """Command name -> ``run(pipe, job, callback) -> PIL images``."""
    from unclip.cli import manipulate

    return {"generate": run_generate_job, **manipulate.RUNNERS}


def run_and_write(
    pipe: UnCLIPPipeline,
    command: str,
    jobs: list[dict[str, Any]],
    model_record: dict[str, Any],
    writer: O.OutputWriter,
    seeds_of: Callable[[dict[str, Any], int], int] | None = None,
    bars: StageBars | None = None,
) -> list[Path]:
    """Run each job and write its images (as each job finishes). Returns the paths written.

    ``bars`` (default: a new one) draws the progress bars and keeps the per-stage wall times.
    """
    run = runners()[command]
    bars = bars or StageBars()
    try:
        for job in jobs:
            bars.restart_clock()
            images = run(at_size(pipe, job["size"]), job, bars)
            for k, image in enumerate(images):
                record = {
                    "command": command,
                    "job": job,
                    "index": k,
                    "seed": seeds_of(job, k) if seeds_of else job["seed"],
                    "model": model_record,
                    "unclip_version": __version__,
                }
                emit(writer.write(image, record))
    finally:
        bars.close()
    return writer.written


def timing_line(load_seconds: float, stage_seconds: dict[str, float], total_seconds: float) -> str:
    """``load 0.9 s, prior 0.4 s, decoder 3.1 s, upsampler1 4.0 s; total 8.6 s``."""
    parts = [f"load {load_seconds:.1f} s"] + [f"{k} {v:.1f} s" for k, v in stage_seconds.items()]
    return f"time: {', '.join(parts)}; total {total_seconds:.1f} s"


def write_grid(paths: list[Path], out: Path) -> Path:
    """A contact sheet of ``paths`` (4 per row), ``out/grid-<first image>.png``; never overwrites."""
    from PIL import Image

    from unclip.data.images import make_grid

    images = [Image.open(p).convert("RGB") for p in paths]
    path = out / f"grid-{paths[0].name}"
    try:
        with open(path, "xb") as f:
            make_grid(images, cols=min(4, len(images))).save(f, format="PNG")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def emit(path: Path) -> None:
    """Print a written file's path (stdout, at once) unless --quiet."""
    from unclip.progress import quiet

    if not quiet():
        print(path, flush=True)


# ---------------------------------------------------------------------------- generate


def run_generate_job(pipe: UnCLIPPipeline, job: dict[str, Any], callback: Any) -> list[Any]:
    out = pipe(
        job["prompt"],
        num_images_per_prompt=job["num_images"],
        seed=job["seed"],
        prior=job["prior"],
        prior_steps=job["prior_steps"],
        prior_guidance_scale=job["prior_guidance"],
        negative_prompt=job["negative"] or None,
        decoder_steps=job["decoder_steps"],
        decoder_guidance_scale=job["decoder_guidance"],
        upsampler_steps=job["upsampler_steps"],
        precision=job["precision"],
        callback=callback,
    )
    return list(out.images)


def _generate(args: argparse.Namespace) -> int:
    if args.from_manifest:
        return _regenerate(args)
    if args.index is not None:
        raise UserError("--index goes with --from-manifest")
    check_common(args)
    O.check_int_range("--num-images", args.num_images, 1, O.MAX_IMAGES)
    O.check_steps(prior_steps=args.prior_steps)
    O.check_float_range("--prior-guidance", args.prior_guidance, 0.0, O.MAX_GUIDANCE)
    prompts = O.read_prompts(args.prompts, args.prompts_file)
    negative = args.negative.strip() if args.negative else ""
    out = O.prepare_out_dir(args.out)
    started = time.perf_counter()
    pipe, model_record = load_pipeline(args.model)
    load_seconds = time.perf_counter() - started
    size = resolve_size(pipe, args.size)
    check_prompts_fit(pipe, [*prompts, negative] if negative else prompts, args.truncate)
    prior = pipe.defaults.prior_settings(args.prior, args.prior_steps, args.prior_guidance)
    if prior["prior"] == "ar" and pipe.prior_ar is None:
        raise UserError("this model has no autoregressive prior; use --prior diffusion")
    if prior["prior"] == "diffusion" and pipe.prior is None:
        raise UserError("this model has no diffusion prior; use --prior ar")
    base = pick_seed(args.seed)
    n = args.num_images
    common = {
        "num_images": n,
        "negative": negative,
        **prior,
        **decoder_settings(pipe, args, size),
    }
    # Prompt p's image k gets seed base + p * n + k: the seeds one call with every prompt would use.
    jobs = [{"prompt": p, "seed": base + i * n, **common} for i, p in enumerate(prompts)]
    writer = O.OutputWriter(out, "generate")
    bars = StageBars()
    written = run_and_write(pipe, "generate", jobs, model_record, writer, _image_seed, bars)
    from unclip.progress import quiet

    if not quiet():
        if len(written) > 1 and not args.no_grid:
            print(f"grid: {write_grid(written, out)}", file=sys.stderr)
        print(timing_line(load_seconds, bars.seconds, time.perf_counter() - started), file=sys.stderr)
    return 0


def _image_seed(job: dict[str, Any], k: int) -> int:
    return job["seed"] + k


def _regenerate(args: argparse.Namespace) -> int:
    """Run the jobs of manifest entries again and write their images (same bytes)."""
    if args.prompts or args.prompts_file:
        raise UserError("--from-manifest takes no prompts")
    manifest = O.read_manifest(args.from_manifest)
    entries = manifest["images"]
    if args.index is not None:
        if not 0 <= args.index < len(entries):
            raise UserError(f"--index must be between 0 and {len(entries) - 1}, got {args.index}")
        entries = [entries[args.index]]
    if not entries:
        raise UserError(f"{args.from_manifest} lists no images")
    out = O.prepare_out_dir(args.out)
    table = runners()
    pipes: dict[str, tuple[UnCLIPPipeline, dict[str, Any]]] = {}
    done: dict[str, list[Any]] = {}
    bars = StageBars()
    try:
        for e in entries:
            try:
                command, job, index, model = e["command"], e["job"], int(e["index"]), e["model"]
                model["dir"], model["name"]
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{args.from_manifest}: malformed entry {e!s:.60}") from None
            if command not in table:
                raise UserError(f"{args.from_manifest}: unknown command {command!r}")
            model_arg = args.model or (model["dir"] if Path(model["dir"]).is_dir() else model["name"])
            if model_arg not in pipes:
                pipes[model_arg] = load_pipeline(model_arg)
            pipe, model_record = pipes[model_arg]
            key = O.chunk_json({"command": command, "job": job, "model": model_arg})
            if key not in done:
                try:
                    done[key] = table[command](at_size(pipe, resolve_size(pipe, job["size"])), job, bars)
                except KeyError as err:
                    raise UserError(f"{args.from_manifest}: entry {e.get('file', '?')} lacks {err}") from None
            record = {k: v for k, v in e.items() if k not in ("file", "sha256")}
            if args.model:
                record["model"] = model_record
            emit(O.OutputWriter(out, command).write(done[key][index], record))
    finally:
        bars.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="text -> images (PNG + manifest.json)",
        description="Generate images for prompts; writes PNGs and manifest.json into --out and prints their paths.",
    )
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompts ('-' reads one per line from stdin)")
    p.add_argument("--prompts-file", metavar="FILE", help="prompts, one per line (blank lines skipped)")
    p.add_argument("--num-images", type=int, default=1, metavar="N", help="images per prompt (1-64)")
    p.add_argument(
        "--no-grid", action="store_true", help="do not write grid-*.png (a contact sheet of several images)"
    )
    p.add_argument("--prior", choices=["diffusion", "ar"], help="prior to use (default: the model's)")
    p.add_argument("--prior-steps", type=int, metavar="K", help="diffusion prior DDIM steps (1-1000)")
    p.add_argument("--prior-guidance", type=float, metavar="G", help="prior guidance scale")
    p.add_argument("--negative", metavar="TEXT", help="negative prompt (the prior is guided away from it)")
    add_model_args(p)
    add_out_arg(p, "generate")
    p.add_argument("--from-manifest", metavar="FILE", help="regenerate the images a manifest.json lists")
    p.add_argument("--index", type=int, metavar="I", help="with --from-manifest: only entry I (from 0)")
    p.set_defaults(func=_generate)
