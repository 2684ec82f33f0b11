"""`unclip serve`: an OpenAI-compatible Images API, native manipulation endpoints and a browser app.

>>> from unclip.serve import ServeConfig, create_app
>>> app = create_app(pipe, ServeConfig(api_key="secret"))   # an ASGI app for uvicorn

See docs/serving.md for the endpoints, limits and the queue's behaviour.
"""

from __future__ import annotations

from unclip.serve.app import create_app
from unclip.serve.service import ServeConfig, Service

__all__ = ["ServeConfig", "Service", "create_app"]
