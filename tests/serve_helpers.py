"""A live uvicorn server on 127.0.0.1 (random free port) in a thread, for the serving tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving ``app`` in a daemon thread; ``url`` is its base address."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def service(self) -> Any:
        return self.app.state.service

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextmanager
def live_server(model_dir: Path, **config: Any) -> Iterator[LiveServer]:
    """Load the model at ``model_dir`` and serve it with ``ServeConfig(**config)``."""
    from unclip.pipeline import UnCLIPPipeline
    from unclip.serve import ServeConfig, create_app

    pipe = UnCLIPPipeline.from_pretrained(model_dir)
    cfg = ServeConfig(model_id="tiny", **config)
    server = LiveServer(create_app(pipe, cfg, {"name": "tiny", "dir": str(model_dir)})).start()
    try:
        yield server
    finally:
        server.stop()
