"""OpenAI-compatible routes: ``/v1/images/{generations,variations,edits}`` and ``/v1/models``.

Request fields and response shapes follow OpenAI's Images API where they fit; fields this
model has no use for (quality, style, user, ...) are accepted and ignored. Extensions: ``seed``
on every route; sampler settings on generations; ``eta`` on variations; ``max_theta`` and
``from_prompt`` on edits. ``size`` must be one of the sizes the model produces (400 lists them).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from unclip.cli.outputs import MAX_GUIDANCE, MAX_STEPS, chunk_json
from unclip.serve.errors import bad_request
from unclip.serve.queue import Job
from unclip.serve.security import check_prompt, decode_upload, require_key
from unclip.serve.service import MAX_SEED, Service

router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])
ResponseFormat = Literal["url", "b64_json"]
Steps = Annotated[int | None, Field(ge=1, le=MAX_STEPS)]
Guidance = Annotated[float | None, Field(ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False)]
Seed = Annotated[int | None, Field(ge=0, le=MAX_SEED)]


class GenerationRequest(BaseModel):
    """``POST /v1/images/generations``; fields after ``seed`` are unclip extensions."""

    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(max_length=100_000)
    n: Annotated[int | None, Field(ge=1, le=10)] = 1
    size: str | None = None
    response_format: ResponseFormat | None = "url"
    model: str | None = None
    seed: Seed = None
    negative_prompt: str | None = Field(None, max_length=100_000)
    prior: Literal["diffusion", "ar"] | None = None
    prior_steps: Steps = None
    prior_guidance_scale: Guidance = None
    decoder_steps: Steps = None
    decoder_guidance_scale: Guidance = None
    upsampler_steps: Steps = None


class ImageData(BaseModel):
    """One image of a response: ``url`` or ``b64_json``, plus its seed (an extension)."""

    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None
    seed: int | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


def service(request: Request) -> Service:
    return request.app.state.service


def check_n(svc: Service, n: int | None) -> int:
    n = 1 if n is None else n
    if not 1 <= n <= svc.limits.max_n:
        raise bad_request(f"n must be between 1 and {svc.limits.max_n}, got {n}", param="n")
    return n


def generation_job(svc: Service, req: GenerationRequest) -> Job:
    """Validate a generation request and build its job (the command line's job keys)."""
    svc.check_model(req.model)
    prompt = check_prompt(req.prompt, svc.limits)
    svc.check_tokens(prompt)
    negative = check_prompt(req.negative_prompt, svc.limits, "negative_prompt") if req.negative_prompt else ""
    if negative:
        svc.check_tokens(negative, "negative_prompt")
    n = check_n(svc, req.n)
    size = svc.resolve_size(req.size)
    prior = svc.pipe.defaults.prior_settings(req.prior, req.prior_steps, req.prior_guidance_scale)
    name = prior["prior"]
    if (name == "ar" and svc.pipe.prior_ar is None) or (name == "diffusion" and svc.pipe.prior is None):
        raise bad_request(f"this model has no {name} prior", param="prior")
    common = {
        "num_images": n,
        "negative": negative,
        **prior,
        **svc.decoder_spec(size, req.decoder_steps, req.decoder_guidance_scale, req.upsampler_steps),
    }
    key = chunk_json({k: v for k, v in common.items() if k != "num_images"})
    spec = {"prompt": prompt, "seed": svc.seed(req.seed), **common}
    return Job("generate", spec, n=n, batch_key=key)


def respond(
    request: Request, svc: Service, job: Job, images: list[Any], fmt: str | None, command: str
) -> dict[str, Any]:
    """Store the images and build the OpenAI response body."""
    import base64

    data = []
    for image_id, png, seed in svc.keep(job, images, command):
        if fmt == "b64_json":
            data.append({"b64_json": base64.b64encode(png).decode("ascii"), "seed": seed})
        else:
            data.append({"url": str(request.url_for("get_file", image_id=image_id)), "seed": seed})
    return {"created": int(time.time()), "data": data}


async def read_upload(svc: Service, upload: UploadFile, param: str = "image") -> Any:
    data = await upload.read(svc.limits.max_upload_bytes + 1)
    return decode_upload(data, svc.limits, param)


@router.post("/images/generations", response_model=ImagesResponse, response_model_exclude_none=True)
async def generations(request: Request, body: GenerationRequest) -> dict[str, Any]:
    """Text to image (OpenAI ``images.generate``)."""
    svc = service(request)
    job = generation_job(svc, body)
    images = await svc.run(request, job)
    return respond(request, svc, job, images, body.response_format, "generate")


@router.post("/images/variations", response_model=ImagesResponse, response_model_exclude_none=True)
async def variations(
    request: Request,
    image: Annotated[UploadFile, File()],
    n: Annotated[int | None, Form(ge=1, le=10)] = 1,
    size: Annotated[str | None, Form()] = None,
    response_format: Annotated[ResponseFormat | None, Form()] = "url",
    model: Annotated[str | None, Form()] = None,
    seed: Annotated[int | None, Form(ge=0, le=MAX_SEED)] = None,
    eta: Annotated[float | None, Form(ge=0.0, le=10.0, allow_inf_nan=False)] = None,
) -> dict[str, Any]:
    """Variations of an uploaded image (OpenAI ``images.create_variation``) [paper §3.1]."""
    svc = service(request)
    svc.check_model(model)
    n = check_n(svc, n)
    size_px = svc.resolve_size(size)
    picture = await read_upload(svc, image)
    spec = {
        "image": "upload",
        "num_images": n,
        "eta": 1.0 if eta is None else eta,
        "mode": "inverted",
        "refine": 2,
        "seed": svc.seed(seed),
        **svc.decoder_spec(size_px, None, None, None),
    }
    job = Job("variations", spec, {"image": picture}, n=n)
    images = await svc.run(request, job)
    return respond(request, svc, job, images, response_format, "vary")


@router.post("/images/edits", response_model=ImagesResponse, response_model_exclude_none=True)
async def edits(
    request: Request,
    image: Annotated[UploadFile, File()],
    prompt: Annotated[str, Form(max_length=100_000)],
    mask: Annotated[UploadFile | None, File()] = None,
    n: Annotated[int | None, Form(ge=1, le=10)] = 1,
    size: Annotated[str | None, Form()] = None,
    response_format: Annotated[ResponseFormat | None, Form()] = "url",
    model: Annotated[str | None, Form()] = None,
    seed: Annotated[int | None, Form(ge=0, le=MAX_SEED)] = None,
    max_theta: Annotated[float | None, Form(gt=0.0, le=1.0, allow_inf_nan=False)] = None,
    from_prompt: Annotated[str | None, Form(max_length=100_000)] = None,
) -> dict[str, Any]:
    """Edit an image toward ``prompt`` with a text diff [paper §3.3]; masks are refused.

    The n images are the edit at increasing strength: theta = max_theta * k / n, k = 1..n.
    """
    svc = service(request)
    if mask is not None:
        raise bad_request(
            "mask is not supported: unCLIP edits the whole image with a text diff toward the prompt "
            "(no inpainting); send the request without a mask",
            param="mask",
            code="mask_not_supported",
        )
    svc.check_model(model)
    to = check_prompt(prompt, svc.limits)
    svc.check_tokens(to)
    src = check_prompt(from_prompt, svc.limits, "from_prompt") if from_prompt else ""
    n = check_n(svc, n)
    size_px = svc.resolve_size(size)
    picture = await read_upload(svc, image)
    spec = {
        "image": "upload",
        "to": to,
        "from": src,
        "max_theta": 0.5 if max_theta is None else max_theta,
        "frames": n + 1,
        "skip": 1,
        "refine": 2,
        "seed": svc.seed(seed),
        **svc.decoder_spec(size_px, None, None, None),
    }
    job = Job("edit", spec, {"image": picture}, n=n + 1)
    images = await svc.run(request, job)
    return respond(request, svc, job, images, response_format, "edit")


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    """The one model this server runs (OpenAI ``models.list``)."""
    svc = service(request)
    return {
        "object": "list",
        "data": [
            {"id": svc.config.model_id, "object": "model", "created": int(svc.started), "owned_by": "unclip"}
        ],
    }


@router.get("/models/{model_id}")
async def model(request: Request, model_id: str) -> dict[str, Any]:
    svc = service(request)
    svc.check_model(model_id)
    return {"id": svc.config.model_id, "object": "model", "created": int(svc.started), "owned_by": "unclip"}
