"""The model behind the server: builds jobs from requests, runs batches, stores the images.

Every image made is stored as a PNG whose ``unclip`` text chunk holds the same record the
command line writes (``{"command", "job", "index", "seed", "model", "unclip_version"}``, see
:mod:`unclip.cli.generate`); for text to image the job has the command line's keys, so
``unclip generate --from-manifest`` regenerates a downloaded image.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from typing import TYPE_CHECKING, Any

import torch

from unclip import __version__
from unclip.cli import outputs as O
from unclip.cli.generate import at_size, valid_sizes
from unclip.errors import UserError
from unclip.serve.errors import ApiError, bad_request
from unclip.serve.queue import Job, JobCancelled, QueueFull, WorkQueue
from unclip.serve.security import Limits
from unclip.serve.store import ImageStore

if TYPE_CHECKING:
    from fastapi import Request

    from unclip.pipeline import UnCLIPPipeline

MAX_SEED = 2**62 - 1


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Server settings (``unclip serve`` flags).

    Attributes:
        model_id: the name ``GET /v1/models`` lists and requests may give as ``model``.
        api_key: bearer token required on ``/v1`` routes (None: none).
        queue_size: waiting requests at most; more get 429.
        timeout_s: per-request limit (queue wait + run); over it: 504.
        max_batch: images per micro-batch at most (1: off).
        image_ttl_s: how long image URLs stay valid.
        limits: per-request limits.
        public: bound to a non-loopback address (``--insecure``): no Host/Origin check. Without
            a key on loopback, requests must name a loopback host and come from no other origin.
    """

    model_id: str = "unclip"
    api_key: str | None = None
    queue_size: int = 16
    timeout_s: float = 300.0
    max_batch: int = 8
    image_ttl_s: float = 3600.0
    limits: Limits = dataclasses.field(default_factory=Limits)
    public: bool = False


def generate_batch(pipe: UnCLIPPipeline, jobs: list[dict[str, Any]], callback: Any) -> list[list[Any]]:
    """Run several text-to-image jobs with equal settings as one batch through every stage.

    Each job keeps its own seeds (image k of a job draws all its noise from ``seed + k``,
    exactly as :meth:`UnCLIPPipeline.__call__`); the batch changes only float rounding
    (docs/serving.md: what holds).
    """
    from unclip.clip import TextEncoding
    from unclip.pipeline.pipeline import to_output

    s = jobs[0]
    with torch.inference_mode():
        negative = pipe.encode_prompts([s["negative"]]) if s["negative"] else None
        texts, gens = [], []
        for job in jobs:
            gens += pipe.generators([job["seed"] + k for k in range(job["num_images"])])
            texts.append(pipe.encode_prompts([job["prompt"]]).repeat_interleave(job["num_images"]))
        text = TextEncoding.cat(texts)  # one row per image
        emb = pipe.prior_embeds(
            text,
            gens,
            prior=s["prior"],
            steps=s["prior_steps"],
            guidance_scale=s["prior_guidance"],
            negative=negative,
            precision=s["precision"],
            callback=callback,
        )
        images = pipe.decode(
            emb,
            pipe.decoder_noise(gens),
            text=text,
            steps=s["decoder_steps"],
            guidance_scale=s["decoder_guidance"],
            upsampler_steps=s["upsampler_steps"],
            upsampler_generators=gens,
            precision=s["precision"],
            callback=callback,
        )
    pil = to_output(images, "pil")
    out, i = [], 0
    for job in jobs:
        out.append(pil[i : i + job["num_images"]])
        i += job["num_images"]
    return out


def _decoder_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "seed": spec["seed"],
        "steps": spec.get("decoder_steps"),
        "guidance_scale": spec.get("decoder_guidance"),
        "upsampler_steps": spec.get("upsampler_steps"),
        "precision": spec.get("precision"),
    }


class Service:
    """The loaded model, its queue and image store (one per app)."""

    def __init__(self, pipe: UnCLIPPipeline, config: ServeConfig, model_record: dict[str, Any]) -> None:
        self.pipe, self.config, self.model_record = pipe, config, model_record
        self.limits = config.limits
        self.store = ImageStore(ttl_s=config.image_ttl_s)
        self.jobs: dict[str, Job] = {}
        self.queue = WorkQueue(self.run_batch, capacity=config.queue_size, max_batch=config.max_batch)
        self.started = time.time()

    # --- settings -------------------------------------------------------------------------------
    def sizes(self) -> list[str]:
        """Valid ``size`` values, largest (the default) last."""
        return [f"{s}x{s}" for s in valid_sizes(self.pipe)]

    def resolve_size(self, size: str | None) -> int:
        valid = self.sizes()
        if size in (None, "", "auto"):
            return valid_sizes(self.pipe)[-1]
        if size not in valid:
            raise bad_request(
                f"size {size!r} is not supported by this model; valid sizes: {', '.join(valid)}",
                param="size",
                code="invalid_size",
            )
        return int(size.split("x")[0])

    def check_model(self, model: str | None) -> None:
        if model not in (None, "", self.config.model_id, "dall-e-2"):
            raise ApiError(
                404,
                f"the model {model!r} does not exist; this server has {self.config.model_id!r}",
                param="model",
                code="model_not_found",
            )

    def check_tokens(self, prompt: str, param: str = "prompt") -> None:
        tok = getattr(self.pipe.clip, "tokenizer", None)
        count = getattr(tok, "num_tokens", None)
        if count is not None and count(prompt) > self.pipe.clip.max_text_len:
            raise bad_request(
                f"{param} is {count(prompt)} tokens, over this model's limit of {self.pipe.clip.max_text_len}",
                param=param,
                code="prompt_too_long",
            )

    @staticmethod
    def seed(seed: int | None) -> int:
        return secrets.randbelow(2**31) if seed is None else int(seed)

    def decoder_spec(
        self,
        size: int,
        decoder_steps: int | None,
        decoder_guidance: float | None,
        upsampler_steps: int | None,
    ) -> dict[str, Any]:
        """The resolved decoder settings of a job (the command line's keys)."""
        from unclip.nn.precision import default_precision

        d = self.pipe.defaults
        stages = valid_sizes(self.pipe).index(size)
        fallback = d.upsampler_steps or (27,)
        ups = [upsampler_steps or fallback[min(i, len(fallback) - 1)] for i in range(stages)]
        return {
            "decoder_steps": decoder_steps or d.decoder_steps,
            "decoder_guidance": d.decoder_guidance_scale if decoder_guidance is None else decoder_guidance,
            "upsampler_steps": ups,
            "size": size,
            "precision": default_precision(self.pipe.device),
        }

    # --- running ---------------------------------------------------------------------------------
    def run_batch(self, jobs: list[Job], callback: Any) -> list[list[Any]]:
        """The queue's runner: one batch -> each job's PIL images."""
        first = jobs[0]
        pipe = at_size(self.pipe, first.spec["size"])
        if first.kind == "generate":
            return generate_batch(pipe, [j.spec for j in jobs], callback)
        (job,) = jobs
        s, inp = job.spec, job.inputs
        if job.kind == "variations":
            out = pipe.variations(
                inp["image"],
                n=s["num_images"],
                eta=s["eta"],
                mode=s["mode"],
                refine=s["refine"],
                callback=callback,
                **_decoder_kwargs(s),
            )
        elif job.kind == "interpolate":
            out = pipe.interpolate(
                inp["a"],
                inp["b"],
                frames=s["frames"],
                x_T=s["latent"],
                refine=s["refine"],
                callback=callback,
                **_decoder_kwargs(s),
            )
        elif job.kind == "mix":
            out = pipe.mix(
                inp["items"], s["weights"], n=s["num_images"], callback=callback, **_decoder_kwargs(s)
            )
        elif job.kind == "edit":
            out = pipe.text_diff(
                inp["image"],
                s["to"],
                from_=s["from"],
                max_theta=s["max_theta"],
                frames=s["frames"],
                refine=s["refine"],
                callback=callback,
                **_decoder_kwargs(s),
            )
        else:
            raise ValueError(f"unknown job kind {job.kind!r}")
        images = list(out.images)
        return [images[s.get("skip", 0) :]]

    def submit(self, job: Job) -> Job:
        """Queue a job (429 when the queue is full)."""
        job.deadline = time.monotonic() + self.config.timeout_s
        try:
            self.queue.submit(job)
        except QueueFull as e:
            raise ApiError(
                429, f"{e}; retry later", code="queue_full", headers={"Retry-After": "1"}
            ) from None
        return job

    async def run(self, request: Request, job: Job) -> list[Any]:
        """Queue a job and wait for its images; cancels it if the client leaves or time runs out."""
        self.submit(job)
        wrapped = asyncio.wrap_future(job.future)
        while not wrapped.done():
            await asyncio.wait({wrapped}, timeout=0.1)
            if wrapped.done():
                break
            if time.monotonic() > job.deadline:
                job.cancel()
                raise ApiError(
                    504,
                    f"the request took longer than the server's timeout of {self.config.timeout_s:g} s",
                    code="timeout",
                )
            if await request.is_disconnected():
                job.cancel()
                raise ApiError(499, "client disconnected", code="client_closed")
        return self.result(job)

    def result(self, job: Job) -> list[Any]:
        """A finished job's images, or its error as an :class:`ApiError`."""
        try:
            return job.future.result(timeout=0)
        except JobCancelled:
            raise ApiError(504, "the request was cancelled or timed out", code="timeout") from None
        except UserError as e:
            raise bad_request(str(e)) from None
        except ApiError:
            raise
        except Exception:
            raise ApiError(
                500, "the model failed on this request (logged on the server)", type="server_error"
            ) from None

    def keep(self, job: Job, images: list[Any], command: str) -> list[tuple[str, bytes, int]]:
        """Store a job's images; returns (id, png bytes, seed) per image."""
        out = []
        for k, image in enumerate(images):
            seed = job.spec["seed"] + k if job.kind == "generate" else job.spec["seed"]
            record = {
                "command": command,
                "job": job.spec,
                "index": k + job.spec.get("skip", 0),
                "seed": seed,
                "model": self.model_record,
                "unclip_version": __version__,
            }
            png = O.png_bytes(image, record)
            out.append((self.store.put(png, record, image), png, seed))
        return out
