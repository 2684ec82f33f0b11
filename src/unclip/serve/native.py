"""Native endpoints: every manipulation with its full settings, background jobs, files, downloads.

Images are given as ``{"image_id": ID}`` (an image this server made), ``{"b64_json": DATA}`` (an
upload, validated like multipart ones) or, where a prompt fits, ``{"prompt": TEXT}``.

* ``POST /v1/unclip/{variations,interpolate,mix,edit}``: run and answer like the OpenAI routes.
* ``POST /v1/unclip/jobs`` ``{"kind", "params"}``: queue in the background, answer 202 with an id;
  ``GET /v1/unclip/jobs/{id}``: status, per-step progress and, when done, the result.
* ``GET /v1/files/{id}.png``: a stored image (the id is the capability: no key needed).
* ``GET /v1/unclip/download?ids=...``: a zip of PNGs and the command line's ``manifest.json``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import time
import zipfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from unclip.cli import outputs as O
from unclip.serve.api import (
    GenerationRequest,
    Guidance,
    ImagesResponse,
    ResponseFormat,
    Seed,
    Steps,
    check_n,
    generation_job,
    respond,
    service,
)
from unclip.serve.errors import ApiError, bad_request
from unclip.serve.queue import Job
from unclip.serve.security import check_prompt, decode_upload, require_key
from unclip.serve.service import Service

router = APIRouter(prefix="/v1/unclip", dependencies=[Depends(require_key)])
files = APIRouter(prefix="/v1")
MAX_JOBS = 1000


class Item(BaseModel):
    """An input: exactly one of ``prompt``, ``image_id`` or ``b64_json`` (plus a mix weight)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, max_length=100_000)
    image_id: str | None = Field(None, max_length=100)
    b64_json: str | None = Field(None, max_length=8 * 1024 * 1024)
    weight: float = Field(1.0, ge=-100.0, le=100.0, allow_inf_nan=False)


class Decoding(BaseModel):
    """Settings every manipulation takes."""

    model_config = ConfigDict(extra="forbid")
    seed: Seed = None
    decoder_steps: Steps = None
    decoder_guidance_scale: Guidance = None
    upsampler_steps: Steps = None
    refine: int = Field(2, ge=0, le=10)
    size: str | None = None
    response_format: ResponseFormat | None = "url"


class VariationsRequest(Decoding):
    image: Item
    n: int = Field(4, ge=1, le=10)
    eta: float = Field(1.0, ge=0.0, le=10.0, allow_inf_nan=False)
    mode: Literal["inverted", "noise"] = "inverted"


class InterpolateRequest(Decoding):
    a: Item
    b: Item
    frames: int = Field(5, ge=2, le=64)
    latent: Literal["fixed", "interpolate"] = "fixed"


class MixRequest(Decoding):
    items: list[Item] = Field(min_length=2, max_length=64)
    n: int = Field(1, ge=1, le=10)


class EditRequest(Decoding):
    image: Item
    to: str = Field(max_length=100_000)
    from_: str = Field("", alias="from", max_length=100_000)
    max_theta: float = Field(0.5, gt=0.0, le=1.0, allow_inf_nan=False)
    frames: int = Field(5, ge=1, le=64)


class JobRequest(BaseModel):
    kind: Literal["generate", "variations", "interpolate", "mix", "edit"]
    params: dict[str, Any]


_PATHLIKE = re.compile(r"^\S*[./\\]\S*$")


def _item(svc: Service, item: Item, param: str, allow_prompt: bool) -> tuple[Any, dict[str, Any]]:
    """An Item -> (prompt str or PIL image, its manifest description)."""
    given = [k for k in ("prompt", "image_id", "b64_json") if getattr(item, k) is not None]
    if len(given) != 1:
        raise bad_request(f"{param} needs exactly one of prompt, image_id or b64_json", param=param)
    if item.prompt is not None:
        if not allow_prompt:
            raise bad_request(f"{param} must be an image (image_id or b64_json)", param=param)
        text = check_prompt(item.prompt, svc.limits, f"{param}.prompt")
        # The manipulations read a str naming an existing file as an image: refuse anything path-like.
        if _PATHLIKE.match(text) or Path(text).exists():
            raise bad_request(f"{param}.prompt may not look like a file path", param=f"{param}.prompt")
        svc.check_tokens(text, f"{param}.prompt")
        return text, {"prompt": text}
    if item.image_id is not None:
        stored = svc.store.get(item.image_id)
        if stored is None:
            raise ApiError(404, f"{param}.image_id: no such image (unknown or expired)", param=param)
        return stored.image.copy(), {
            "image_id": item.image_id,
            "sha256": hashlib.sha256(stored.png).hexdigest(),
        }
    try:
        data = base64.b64decode(item.b64_json or "", validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{param}.b64_json is not valid base64", param=param) from None
    return decode_upload(data, svc.limits, param), {"upload_sha256": hashlib.sha256(data).hexdigest()}


def _decoding(svc: Service, req: Decoding) -> dict[str, Any]:
    size = svc.resolve_size(req.size)
    spec = svc.decoder_spec(size, req.decoder_steps, req.decoder_guidance_scale, req.upsampler_steps)
    return {"seed": svc.seed(req.seed), "refine": req.refine, **spec}


def build_job(svc: Service, kind: str, params: dict[str, Any]) -> tuple[Job, str | None, str]:
    """Validate ``params`` for ``kind``; returns (job, response_format, manifest command)."""
    from pydantic import ValidationError

    models = {
        "generate": GenerationRequest,
        "variations": VariationsRequest,
        "interpolate": InterpolateRequest,
        "mix": MixRequest,
        "edit": EditRequest,
    }
    try:
        req = models[kind].model_validate(params)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise bad_request(f"{param}: {first['msg']}"[:500], param=param) from None
    if isinstance(req, GenerationRequest):
        return generation_job(svc, req), req.response_format, "generate"
    base = _decoding(svc, req)
    if isinstance(req, VariationsRequest):
        n = check_n(svc, req.n)
        image, desc = _item(svc, req.image, "image", allow_prompt=False)
        spec = {"image": desc, "num_images": n, "eta": req.eta, "mode": req.mode, **base}
        return Job("variations", spec, {"image": image}, n=n), req.response_format, "vary"
    if isinstance(req, InterpolateRequest):
        frames = min(req.frames, svc.limits.max_frames)
        if frames != req.frames:
            raise bad_request(f"frames must be at most {svc.limits.max_frames}", param="frames")
        a, da = _item(svc, req.a, "a", allow_prompt=True)
        b, db = _item(svc, req.b, "b", allow_prompt=True)
        spec = {"a": da, "b": db, "frames": frames, "latent": req.latent, **base}
        return Job("interpolate", spec, {"a": a, "b": b}, n=frames), req.response_format, "interpolate"
    if isinstance(req, MixRequest):
        if len(req.items) > svc.limits.max_mix_items:
            raise bad_request(f"at most {svc.limits.max_mix_items} items", param="items")
        n = check_n(svc, req.n)
        pairs = [_item(svc, it, f"items.{i}", allow_prompt=True) for i, it in enumerate(req.items)]
        weights = [it.weight for it in req.items]
        if all(w == 0 for w in weights):
            raise bad_request("weights are all zero", param="items")
        spec = {"items": [d for _, d in pairs], "weights": weights, "num_images": n, **base}
        return Job("mix", spec, {"items": [p for p, _ in pairs]}, n=n), req.response_format, "mix"
    assert isinstance(req, EditRequest)
    if req.frames > svc.limits.max_frames:
        raise bad_request(f"frames must be at most {svc.limits.max_frames}", param="frames")
    image, desc = _item(svc, req.image, "image", allow_prompt=False)
    to = check_prompt(req.to, svc.limits, "to")
    src = check_prompt(req.from_, svc.limits, "from") if req.from_.strip() else ""
    for text, param in ((to, "to"), (src, "from")):
        if text:
            svc.check_tokens(text, param)
    spec = {"image": desc, "to": to, "from": src, "max_theta": req.max_theta, "frames": req.frames, **base}
    return Job("edit", spec, {"image": image}, n=req.frames), req.response_format, "edit"


async def _run(request: Request, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    svc = service(request)
    job, fmt, command = build_job(svc, kind, params)
    images = await svc.run(request, job)
    return respond(request, svc, job, images, fmt, command)


@router.post("/variations", response_model=ImagesResponse, response_model_exclude_none=True)
async def native_variations(request: Request, body: VariationsRequest) -> dict[str, Any]:
    """Variations of a stored or uploaded image with every setting [paper §3.1]."""
    return await _run(request, "variations", body.model_dump(by_alias=True, exclude_unset=True))


@router.post("/interpolate", response_model=ImagesResponse, response_model_exclude_none=True)
async def native_interpolate(request: Request, body: InterpolateRequest) -> dict[str, Any]:
    """Frames between two images or prompts [paper §3.2]."""
    return await _run(request, "interpolate", body.model_dump(by_alias=True, exclude_unset=True))


@router.post("/mix", response_model=ImagesResponse, response_model_exclude_none=True)
async def native_mix(request: Request, body: MixRequest) -> dict[str, Any]:
    """A weighted mix of images' and prompts' embeddings."""
    return await _run(request, "mix", body.model_dump(by_alias=True, exclude_unset=True))


@router.post("/edit", response_model=ImagesResponse, response_model_exclude_none=True)
async def native_edit(request: Request, body: EditRequest) -> dict[str, Any]:
    """A text-diff edit, frame 0 (the reconstruction) to ``max_theta`` [paper §3.3]."""
    return await _run(request, "edit", body.model_dump(by_alias=True, exclude_unset=True))


@router.post("/jobs", status_code=202)
async def submit_job(request: Request, body: JobRequest) -> JSONResponse:
    """Queue any job in the background; poll ``GET /v1/unclip/jobs/{id}``."""
    svc = service(request)
    job, _, command = build_job(svc, body.kind, body.params)
    job.inputs["command"] = command
    _forget_old_jobs(svc)
    svc.submit(job)
    svc.jobs[job.id] = job
    return JSONResponse({"id": job.id, "status": job.status}, status_code=202)


def _forget_old_jobs(svc: Service) -> None:
    now = time.time()
    for key, job in list(svc.jobs.items()):
        if job.future.done() and (now - job.created > svc.config.image_ttl_s or len(svc.jobs) > MAX_JOBS):
            del svc.jobs[key]


@router.get("/jobs/{job_id}")
async def job_status(request: Request, job_id: str) -> dict[str, Any]:
    """A background job's status, progress ``{stage, step, total}`` and result when done."""
    svc = service(request)
    job = svc.jobs.get(job_id)
    if job is None:
        raise ApiError(404, "no such job (unknown or expired)", param="job_id")
    out: dict[str, Any] = {"id": job.id, "kind": job.kind, "status": job.status, "progress": job.progress}
    if job.future.done():
        if "result" not in job.inputs:
            try:
                images = svc.result(job)
                job.inputs["result"] = respond(request, svc, job, images, "url", job.inputs["command"])
            except ApiError as e:
                job.inputs["result"] = {
                    "error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}
                }
            job.inputs.pop("image", None)
        result = job.inputs["result"]
        out["status"] = "error" if "error" in result else "done"
        out.update(result)
    return out


@files.get("/files/{image_id}.png", name="get_file")
async def get_file(request: Request, image_id: str) -> Response:
    """A stored PNG (settings in its ``unclip`` text chunk)."""
    stored = service(request).store.get(image_id)
    if stored is None:
        raise ApiError(404, "no such image (unknown or expired)", param="image_id")
    return Response(stored.png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@files.get("/unclip/download")
async def download(request: Request, ids: Annotated[str, Query(max_length=4000)]) -> Response:
    """A zip of stored images and a ``manifest.json`` in the command line's format."""
    svc = service(request)
    keys = [k for k in ids.split(",") if k][:100]
    if not keys:
        raise bad_request("give ids=ID,ID,...", param="ids")
    manifest: dict[str, Any] = {"format": O.MANIFEST_FORMAT, "version": O.MANIFEST_VERSION, "images": []}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for k, key in enumerate(keys):
            stored = svc.store.get(key)
            if stored is None:
                raise ApiError(404, f"no such image: {key[:20]!r} (unknown or expired)", param="ids")
            name = f"{stored.record['command']}-{k:04d}.png"
            zf.writestr(name, stored.png)
            sha = hashlib.sha256(stored.png).hexdigest()
            manifest["images"].append({"file": name, "sha256": sha, **stored.record})
        zf.writestr(O.MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    headers = {"Content-Disposition": 'attachment; filename="unclip-images.zip"'}
    return Response(buf.getvalue(), media_type="application/zip", headers=headers)
