"""The serving queue: micro-batching, 429 when full, timeouts, disconnects; fuzzing the routes."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline_helpers import make_tiny_model  # noqa: E402
from serve_helpers import live_server  # noqa: E402
from unclip.serve.queue import Job, JobCancelled, QueueFull, WorkQueue  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("serveq") / "tiny")


# ------------------------------------------------------------------------- the queue alone


class Gate:
    """A run_batch that records its batches and blocks until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, jobs: list[Job], callback) -> list[str]:
        self.batches.append([j.spec["name"] for j in jobs])
        self.entered.set()
        while not self.release.wait(0.01):
            callback("decoder", 1, 1)  # raises JobCancelled when every job left
        return [j.spec["name"] for j in jobs]


def job(name: str, key: str | None = "k", n: int = 1) -> Job:
    return Job("generate", {"name": name}, n=n, batch_key=key)


def test_queue_batches_compatible_jobs() -> None:
    gate = Gate()
    q = WorkQueue(gate, capacity=10, max_batch=4)
    try:
        first = q.submit(job("first", key="a"))
        assert gate.entered.wait(5)
        waiting = [q.submit(job(f"j{i}", key="b" if i != 2 else "c", n=1 if i != 3 else 2)) for i in range(6)]
        gate.release.set()
        assert [w.future.result(5) for w in waiting] == [f"j{i}" for i in range(6)]
        assert first.future.result(5) == "first"
        # j0, j1 (b); j3 is 2 images: b-batch holds j0, j1, j3 = 4 images; j4 no longer fits; c alone
        assert gate.batches == [["first"], ["j0", "j1", "j3"], ["j2"], ["j4", "j5"]]
        assert q.stats["batched_jobs"] == 5
    finally:
        q.close()


def test_queue_full_and_cancel() -> None:
    gate = Gate()
    q = WorkQueue(gate, capacity=2, max_batch=1)
    try:
        running = q.submit(job("run", key=None))
        assert gate.entered.wait(5)
        a, b = q.submit(job("a")), q.submit(job("b"))
        with pytest.raises(QueueFull):
            q.submit(job("c"))
        a.cancel()  # a cancelled job frees its place and never runs
        c = q.submit(job("c"))
        running.cancel()  # the running job stops at its next step
        with pytest.raises(JobCancelled):
            running.future.result(5)
        gate.release.set()
        assert b.future.result(5) == "b" and c.future.result(5) == "c"
        with pytest.raises(JobCancelled):
            a.future.result(0)
        assert ["a"] not in gate.batches and q.stats["rejected"] == 1
    finally:
        q.close()


# ------------------------------------------------------------------------- a live server


def wait_until(condition, timeout: float = 30) -> bool:
    """Poll ``condition()`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def slow_down(server, seconds: float, started: threading.Event | None = None) -> threading.Event:
    """Make every batch of ``server`` wait ``seconds`` (or until the event is set) first.

    ``started``, if given, is set when the first slowed batch begins.
    """
    original = server.service.queue.run_batch
    release = threading.Event()

    def slow(jobs, callback):
        if started is not None:
            started.set()
        end = time.monotonic() + seconds
        while time.monotonic() < end and not release.is_set():
            callback("wait", 0, 1)
            time.sleep(0.01)
        return original(jobs, callback)

    server.service.queue.run_batch = slow
    return release


def test_queue_full_gives_429_then_recovers(tiny_model: Path) -> None:
    with live_server(tiny_model, queue_size=1, max_batch=1) as server:
        started = threading.Event()
        release = slow_down(server, 30, started)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)

        def call(i: int) -> str:
            try:
                client.images.generate(prompt="a red circle", n=1, size="16x16")
                return "ok"
            except openai.RateLimitError as e:
                assert e.body["code"] == "queue_full" and e.response.headers["retry-after"] == "1"
                return "429"

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            running = pool.submit(call, 0)
            assert started.wait(30)
            waiting = pool.submit(call, 1)
            assert wait_until(lambda: server.service.queue.waiting() == 1)
            refused = [pool.submit(call, i).result() for i in (2, 3)]  # queue full: refused at once
            release.set()
            results = [running.result(), waiting.result(), *refused]
        assert results == ["ok", "ok", "429", "429"]  # one running, one waiting, two refused
        assert httpx.get(server.url + "/health").json()["stats"]["rejected"] == 2
        server.service.queue.run_batch = server.service.run_batch
        assert client.images.generate(prompt="a red circle", size="16x16").data[0].url


def test_timeout_and_disconnect_cancel(tiny_model: Path) -> None:
    with live_server(tiny_model, timeout_s=0.5) as server:
        slow_down(server, 30)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
        t = time.monotonic()
        with pytest.raises(openai.InternalServerError) as exc:
            client.images.generate(prompt="a red circle")
        assert exc.value.status_code == 504 and exc.value.body["code"] == "timeout"
        assert time.monotonic() - t < 5  # the running job was stopped, not waited for
    with live_server(tiny_model, timeout_s=60) as server:
        slow_down(server, 30)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/images/generations", json={"prompt": "a red circle"}, timeout=0.5)
        assert wait_until(lambda: not server.service.queue.running, 10)  # the client left: its job stopped


def test_batching_keeps_each_requests_seeds(tiny_model: Path) -> None:
    with live_server(tiny_model, max_batch=8) as server:
        started = threading.Event()
        release = slow_down(server, 30, started)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
        prompts = [("a red circle", 11, 1), ("a big blue square", 20, 2), ("a green triangle", 5, 1)]

        def call(p: str, seed: int, n: int) -> list[bytes]:
            r = client.images.generate(prompt=p, n=n, response_format="b64_json", extra_body={"seed": seed})
            return [Image.open(io.BytesIO(base64.b64decode(d.b64_json))).tobytes() for d in r.data]

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            blocker = pool.submit(call, "a small red circle", 0, 1)
            # The blocker's batch must be running before the three arrive, and all three must be
            # queued before it ends, or they split differently (no fixed sleeps: CI may be slow).
            assert started.wait(30)
            futures = [pool.submit(call, *p) for p in prompts]
            assert wait_until(lambda: server.service.queue.waiting() == len(prompts))
            release.set()
            batched = [f.result() for f in futures]
            blocker.result()
        stats = httpx.get(server.url + "/health").json()["stats"]
        assert stats["batched_jobs"] == 3 and stats["batches"] == 2
        server.service.queue.run_batch = server.service.run_batch
        for (p, seed, n), got in zip(prompts, batched):
            alone = call(p, seed, n)
            assert len(got) == n
            for a, b in zip(alone, got):
                diff = max(abs(x - y) for x, y in zip(a, b))
                assert diff <= 1  # bf16 on CPU: identical in practice (docs/serving.md)


def test_keyless_server_refuses_foreign_hosts_and_origins(tiny_model: Path) -> None:
    with live_server(tiny_model) as server:
        ok = httpx.get(server.url + "/health")
        assert ok.status_code == 200
        assert httpx.get(server.url + "/health", headers={"Origin": server.url}).status_code == 200
        rebound = httpx.get(server.url + "/health", headers={"Host": "evil.example:80"})
        assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_not_allowed"
        files = {"image": ("x.png", b"x", "image/png")}
        csrf = httpx.post(
            server.url + "/v1/images/variations", files=files, headers={"Origin": "http://evil.example"}
        )
        assert csrf.status_code == 403


# ------------------------------------------------------------------------- fuzzing

ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 12),
    st.integers(min_value=2**62, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
GEN_FIELDS = {
    "prompt": st.one_of(st.sampled_from(["a red circle", "", "  ", "a" * 1001, "../../etc/passwd"]), ANY),
    "n": st.one_of(st.integers(0, 3), ANY),
    "size": st.one_of(st.sampled_from(["16x16", "64x64", "auto", "1024x1024", "0x0"]), ANY),
    "response_format": st.one_of(st.sampled_from(["url", "b64_json", "png"]), ANY),
    "model": st.one_of(st.sampled_from(["tiny", "dall-e-2", "gpt-image-1"]), ANY),
    "seed": ANY,
    "prior": st.one_of(st.sampled_from(["ar", "diffusion", "x"]), ANY),
    "decoder_steps": st.one_of(st.integers(-1, 3), ANY),
    "decoder_guidance_scale": ANY,
    "upsampler_steps": st.one_of(st.integers(-1, 3), ANY),
    "negative_prompt": ANY,
}
ITEM = st.one_of(
    st.fixed_dictionaries({}, optional={"prompt": ANY, "image_id": ANY, "b64_json": ANY, "weight": ANY}),
    ANY,
)
NATIVE = {
    "interpolate": {"a": ITEM, "b": ITEM, "frames": st.one_of(st.integers(0, 3), ANY), "latent": ANY},
    "mix": {"items": st.one_of(st.lists(ITEM, max_size=3), ANY), "n": ANY},
    "edit": {
        "image": ITEM,
        "to": ANY,
        "from": ANY,
        "max_theta": ANY,
        "frames": st.one_of(st.integers(0, 3), ANY),
    },
    "variations": {"image": ITEM, "n": ANY, "eta": ANY, "mode": ANY, "refine": ANY, "decoder_steps": ANY},
}


def check_response(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    assert "Traceback" not in r.text and 'File "' not in r.text
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def post_json(http: httpx.Client, path: str, body: object) -> httpx.Response:
    """POST ``body`` as JSON text (NaN and Infinity written as Python does: invalid JSON)."""
    return http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.fixture(scope="module")
def fuzz_server(tiny_model: Path):
    with (
        live_server(tiny_model, queue_size=64) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        yield http


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@FUZZ
@given(body=st.one_of(st.fixed_dictionaries({}, optional=GEN_FIELDS), ANY))
def test_fuzz_generations(fuzz_server: httpx.Client, body) -> None:
    check_response(post_json(fuzz_server, "/v1/images/generations", body))


@FUZZ
@given(kind=st.sampled_from(sorted(NATIVE)), data=st.data())
def test_fuzz_native(fuzz_server: httpx.Client, kind: str, data) -> None:
    body = data.draw(st.fixed_dictionaries({}, optional=NATIVE[kind]))
    check_response(post_json(fuzz_server, f"/v1/unclip/{kind}", body))
    check_response(post_json(fuzz_server, "/v1/unclip/jobs", {"kind": kind, "params": body}))


@FUZZ
@given(
    fields=st.dictionaries(
        st.sampled_from(["n", "size", "response_format", "seed", "eta", "prompt", "mask"]),
        st.text(max_size=12),
        max_size=4,
    ),
    image=st.one_of(st.binary(max_size=64), st.just(b"\x89PNG\r\n\x1a\n" + bytes(40))),
)
def test_fuzz_uploads(fuzz_server: httpx.Client, fields: dict, image: bytes) -> None:
    files = {"image": ("x.png", image, "image/png")}
    check_response(fuzz_server.post("/v1/images/variations", data=fields, files=files))
    check_response(fuzz_server.post("/v1/images/edits", data={"prompt": "a cat", **fields}, files=files))
