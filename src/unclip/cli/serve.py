"""`unclip serve`: the OpenAI-compatible Images API and the browser app (docs/serving.md)."""

from __future__ import annotations

import argparse
import logging

from unclip.errors import UserError

log = logging.getLogger("unclip.serve")


def _serve(args: argparse.Namespace) -> int:
    from unclip.serve.security import is_loopback

    if args.port < 0 or args.port > 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    for name in ("queue_size", "max_batch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.timeout > 0:
        raise UserError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.api_key is not None and not args.api_key.strip():
        raise UserError("--api-key must not be empty")
    if not is_loopback(args.host) and not args.api_key:
        if not args.insecure:
            raise UserError(
                f"refusing to serve on non-loopback address {args.host} without --api-key "
                "(pass --insecure to do it anyway)"
            )
        log.warning("WARNING: serving on %s with no API key: anyone who can reach it can use it", args.host)

    import uvicorn  # the [serve] extra; a missing one is reported by the CLI with the extra to install

    from unclip.cli.generate import load_pipeline
    from unclip.serve import ServeConfig, create_app

    pipe, record = load_pipeline(args.model)  # UserError naming the known bundles
    config = ServeConfig(
        model_id=record["name"] if args.model is None else _model_id(args.model),
        api_key=args.api_key,
        queue_size=args.queue_size,
        timeout_s=args.timeout,
        max_batch=args.max_batch,
        public=not is_loopback(args.host),
    )
    app = create_app(pipe, config, record)
    log.info("unclip serve: http://%s:%d/ (model %s)", args.host, args.port, config.model_id)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return 0


def _model_id(model: str) -> str:
    from pathlib import Path

    return Path(model).name or model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible Images API + browser app",
        description="Serve a model over HTTP: OpenAI-compatible /v1/images/* routes, native "
        "manipulation routes and a browser page at / (see docs/serving.md).",
    )
    p.add_argument("--model", metavar="NAME|DIR", help="bundle name or model directory (default: shapes)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on /v1 routes")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without --api-key")
    p.add_argument(
        "--queue-size", type=int, default=16, metavar="N", help="waiting requests at most (429 beyond)"
    )
    p.add_argument(
        "--timeout", type=float, default=300.0, metavar="S", help="per-request limit in seconds (504 beyond)"
    )
    p.add_argument("--max-batch", type=int, default=8, metavar="B", help="images per micro-batch (1: off)")
    p.set_defaults(func=_serve)
