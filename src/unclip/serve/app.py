"""The FastAPI app: OpenAI routes, native routes, ``/health`` and the browser page at ``/``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from unclip import __version__
from unclip.serve import api, native
from unclip.serve.errors import ApiError, install_handlers
from unclip.serve.security import BodyLimit, LocalGuard
from unclip.serve.service import ServeConfig, Service

if TYPE_CHECKING:
    from unclip.pipeline import UnCLIPPipeline

STATIC = {"app.js": "text/javascript", "app.css": "text/css"}


def _static(name: str) -> bytes:
    return resources.files("unclip.serve").joinpath("static", name).read_bytes()


def create_app(
    pipe: UnCLIPPipeline, config: ServeConfig | None = None, model_record: dict[str, Any] | None = None
) -> FastAPI:
    """An ASGI app serving ``pipe`` (see docs/serving.md).

    Args:
        pipe: the loaded pipeline (the worker thread is its only user).
        config: server settings.
        model_record: the "model" of each image's manifest record.
    """
    config = config or ServeConfig()
    service = Service(pipe, config, model_record or {"name": config.model_id})

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.queue.close()

    app = FastAPI(
        title="unclip serve",
        version=__version__,
        summary="OpenAI-compatible Images API and native unCLIP manipulations",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load assets from a CDN; the schema stays at /openapi.json
        redoc_url=None,
    )
    app.state.service = service
    install_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=config.limits.max_body_bytes)
    if not config.api_key and not config.public:
        app.add_middleware(LocalGuard)
    app.include_router(api.router)
    app.include_router(native.router)
    app.include_router(native.files)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and queue state (no key needed)."""
        q = service.queue
        return {
            "status": "ok",
            "model": config.model_id,
            "sizes": service.sizes(),
            "queue": {"waiting": q.waiting(), "capacity": q.capacity, "running": len(q.running)},
            "max_batch": q.max_batch,
            "stats": dict(q.stats),
            "auth": bool(config.api_key),
            "limits": config.limits.__dict__,
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(_static("index.html"), headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC:  # a fixed list: no user-controlled paths
            raise ApiError(404, "no such file")
        return Response(_static(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon(_: Request) -> Response:
        return Response(status_code=204)

    return app
