"""Safety: the API key, request limits, upload validation and the loopback check.

* :class:`Limits`: prompt length, images per request, upload bytes, image pixels, body bytes.
* :func:`decode_upload`: bytes -> RGB PIL image, refusing non-images, unknown formats and images
  with more than ``max_pixels`` pixels *before* decoding them (decompression bombs).
* :class:`BodyLimit`: a pure ASGI middleware answering 413 for bodies over the limit (and 411
  for chunked uploads, whose size is unknown up front) before anything reads them.
* :func:`require_key`: the bearer-token check of every ``/v1`` route when a key is set.
"""

from __future__ import annotations

import dataclasses
import hmac
import io
import ipaddress
import json
import socket
from typing import Any

from fastapi import Request

from unclip.serve.errors import ApiError, bad_request, error_body

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-request limits (docs/serving.md lists them)."""

    max_prompt_chars: int = 1000
    max_n: int = 10
    max_frames: int = 16
    max_mix_items: int = 8
    max_upload_bytes: int = 4 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_body_bytes: int = 12 * 1024 * 1024


def check_prompt(prompt: Any, limits: Limits, param: str = "prompt") -> str:
    """A non-empty prompt of at most ``max_prompt_chars`` characters."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad_request(f"{param} must be a non-empty string", param=param)
    if len(prompt) > limits.max_prompt_chars:
        raise bad_request(
            f"{param} is {len(prompt)} characters, over the limit of {limits.max_prompt_chars}",
            param=param,
            code="prompt_too_long",
        )
    if "\x00" in prompt:
        raise bad_request(f"{param} contains a NUL character", param=param)
    return prompt.strip()


def decode_upload(data: bytes, limits: Limits, param: str = "image") -> Any:
    """Validate and decode an uploaded image; returns an RGB PIL image.

    Raises:
        ApiError: 400 for too many bytes, not an image, an unsupported format or too many pixels.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise bad_request(f"{param} is empty", param=param)
    if len(data) > limits.max_upload_bytes:
        raise bad_request(
            f"{param} is {len(data)} bytes, over the limit of {limits.max_upload_bytes}",
            param=param,
            code="image_too_large",
        )
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
            if fmt not in ALLOWED_FORMATS:
                raise bad_request(
                    f"{param} format {fmt} is not supported; send PNG, JPEG, WEBP, GIF or BMP",
                    param=param,
                    code="invalid_image_format",
                )
            if w < 1 or h < 1 or w * h > limits.max_image_pixels:
                raise bad_request(
                    f"{param} is {w}x{h} pixels, over the limit of {limits.max_image_pixels} pixels",
                    param=param,
                    code="image_too_large",
                )
            im.load()
            return im.convert("RGB")
    except ApiError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise bad_request(
            f"{param} is not a valid image ({type(e).__name__})", param=param, code="invalid_image"
        ) from None
    except Exception:  # PIL plugins raise assorted errors on hostile input
        raise bad_request(f"{param} is not a valid image", param=param, code="invalid_image") from None


def is_loopback(host: str) -> bool:
    """True for loopback addresses and names that resolve only to loopback addresses."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def require_key(request: Request) -> None:
    """FastAPI dependency: 401 unless the request carries ``Authorization: Bearer <key>``."""
    key: str | None = request.app.state.service.config.api_key
    if not key:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(
            401,
            "missing or incorrect API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


class BodyLimit:
    """ASGI middleware: 413 for declared bodies over ``max_bytes``, 411 for chunked POSTs."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        status = message = None
        if length is None:
            if "chunked" in headers.get("transfer-encoding", "").lower():
                status, message = 411, "send a Content-Length header (chunked request bodies are refused)"
        elif not length.isdigit():
            status, message = 400, "invalid Content-Length header"
        elif int(length) > self.max_bytes:
            status, message = 413, f"request body is {length} bytes, over the limit of {self.max_bytes}"
        if status is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps(error_body(message, "invalid_request_error", None, "request_too_large")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def _hostname(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class LocalGuard:
    """ASGI middleware for a keyless server on loopback: 403 unless the ``Host`` header names a
    loopback address (DNS rebinding) and any ``Origin`` header names the same host (cross-site
    requests from other pages in the user's browser)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        origin = headers.get("origin")
        ok = _hostname(host) in LOOPBACK_NAMES
        if ok and origin is not None and origin != "null":
            ok = origin.split("://", 1)[-1].rstrip("/").lower() == host.strip().lower()
        if ok:
            await self.app(scope, receive, send)
            return
        message = "this server only answers requests addressed to it on localhost (use --api-key to open it)"
        body = json.dumps(error_body(message, "permission_error", None, "host_not_allowed")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
