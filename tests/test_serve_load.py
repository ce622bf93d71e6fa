"""Bounded work per request (issue 17, item 1), against uvicorn in this process so the engine can
be slowed down and watched: a full queue answers 503 with Retry-After at once; an image over its
time budget, or whose client left, stops at the next batch of lines; a client that sends its
headers or its body too slowly is cut off."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from fedocr.serve.app import ServeConfig, create_app
from fedocr.serve.connections import header_deadline
from fedocr.serve.engine import Batching
from serve_fixtures import free_port, png, random_model, render_page

pytestmark = pytest.mark.slow
CALL_S = 0.15   # each run of the slowed network


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_model(tmp_path_factory.mktemp("load") / "model.pt")


@pytest.fixture(scope="module")
def page() -> bytes:
    return png(render_page(6, seed=3).image)   # a dozen lines, read one network run at a time below


class Slowed:
    """The served engine's network, one line per run and CALL_S slower; counts its runs."""

    def __init__(self, app: Any) -> None:
        self.state = app.state.fedocr
        engine = self.state.slot.current.engine
        engine.batching = Batching(batch_size=1, workers=1)
        self.calls, inner = 0, engine.logits_fn

        def slow(*args: Any) -> Any:
            self.calls += 1
            time.sleep(CALL_S)
            return inner(*args)

        engine.logits_fn = slow

    def settled(self) -> bool:
        """No run started in the last few run times: the work has stopped."""
        before = self.calls
        time.sleep(4 * CALL_S)
        return self.calls <= before + 1


@contextmanager
def serving(config: ServeConfig, read_timeout_s: float = 10.0) -> Iterator[tuple[str, int, Slowed]]:
    """The app under uvicorn in a thread, as `fedocr serve` runs it; stopped at exit."""
    app = create_app(config)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           http=header_deadline(read_timeout_s), limit_concurrency=16))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", port, Slowed(app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive()


def upload(base: str, data: bytes, timeout: float = 60) -> httpx.Response:
    return httpx.post(base + "/api/ocr", files={"image": ("page.png", data, "image/png")}, timeout=timeout)


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def raw_request(base: str, data: bytes) -> bytes:
    """The bytes of an /api/ocr upload, for a client that misbehaves on a socket."""
    request = httpx.Request("POST", base + "/api/ocr", files={"image": ("page.png", data, "image/png")})
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    return f"POST /api/ocr HTTP/1.1\r\n{head}\r\n".encode() + request.read()


def test_an_image_over_its_time_budget_stops_at_the_next_batch_and_answers_503(model: Path, page: bytes) -> None:
    with serving(ServeConfig(model=model, request_timeout_s=1.0, cache_size=0)) as (base, _, slowed):
        started = time.monotonic()
        r = upload(base, page)
        assert r.status_code == 503 and "budget" in r.json()["detail"] and r.headers["retry-after"] == "1"
        assert time.monotonic() - started < 1.0 + 6 * CALL_S
        assert slowed.settled() and slowed.calls < 20   # the whole page would be dozens of runs
        assert httpx.get(base + "/api/health").status_code == 200


def test_a_full_queue_answers_503_with_retry_after_at_once(model: Path, page: bytes) -> None:
    config = ServeConfig(model=model, workers=1, queue=1, cache_size=0, request_timeout_s=30.0)
    with serving(config) as (base, _, slowed):
        answers: list[int] = []
        busy = [threading.Thread(target=lambda: answers.append(upload(base, page).status_code)) for _ in range(2)]
        for thread in busy:   # one runs, one waits
            thread.start()
        deadline = time.monotonic() + 10
        while slowed.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        started = time.monotonic()
        third = upload(base, page)
        assert third.status_code == 503 and third.headers["retry-after"] == "1" and "busy" in third.json()["detail"]
        assert time.monotonic() - started < 1.0
        for thread in busy:
            thread.join(timeout=120)
        assert answers == [200, 200]


def test_a_waiting_request_whose_client_left_frees_its_place_in_the_queue(model: Path, page: bytes) -> None:
    config = ServeConfig(model=model, workers=1, queue=1, cache_size=0, request_timeout_s=30.0)
    with serving(config) as (base, port, slowed):
        first: list[int] = []
        running = threading.Thread(target=lambda: first.append(upload(base, page).status_code))
        running.start()
        assert _until(lambda: slowed.calls > 0)
        with socket.create_connection(("127.0.0.1", port)) as leaving:   # takes the one place in the queue ...
            leaving.sendall(raw_request(base, page))
            assert _until(lambda: slowed.state.pending == 2)
        assert _until(lambda: slowed.state.pending == 1)                  # ... and gives it back when it leaves,
        assert running.is_alive()                                         # not when the first page is done
        assert upload(base, page).status_code == 200       # not 503 busy: the queue had room again
        running.join(timeout=120)
        assert first == [200]


def test_work_for_a_client_that_disconnected_stops(model: Path, page: bytes) -> None:
    with serving(ServeConfig(model=model, request_timeout_s=60.0, cache_size=0)) as (base, port, slowed):
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(raw_request(base, page))
            deadline = time.monotonic() + 10
            while slowed.calls < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
        assert slowed.calls >= 2          # it was reading the page when the client went away
        time.sleep(0.5)
        assert slowed.settled() and slowed.calls < 20


def test_slow_headers_are_cut_off_and_a_stalled_or_dripping_body_gets_408(model: Path) -> None:
    with serving(ServeConfig(model=model, read_timeout_s=1.0), read_timeout_s=1.0) as (base, port, _):
        with socket.create_connection(("127.0.0.1", port)) as slow_headers:
            slow_headers.sendall(b"POST /api/ocr HTTP/1.1\r\nHost: x\r\n")
            slow_headers.settimeout(10)
            started = time.monotonic()
            assert slow_headers.recv(1024) == b""   # closed by the server
            assert time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", port)) as slow_body:
            slow_body.sendall(b"POST /api/ocr HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                              b"Content-Length: 5000\r\n\r\n--b\r\n")
            slow_body.settimeout(10)
            answer = slow_body.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408") and b"paused" in answer
        with socket.create_connection(("127.0.0.1", port)) as dripping:   # never pauses long, never gets far
            dripping.sendall(b"POST /api/ocr HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                             b"Content-Length: 100000\r\n\r\n--b\r\n")
            dripping.settimeout(0.3)
            started, answer = time.monotonic(), b""
            while not answer and time.monotonic() - started < 10:
                try:
                    dripping.sendall(b"x" * 100)
                    answer = dripping.recv(4096)
                except TimeoutError:
                    continue
                except OSError:    # closed after the answer
                    break
            assert answer.startswith(b"HTTP/1.1 408") and b"must average 16 KiB/s" in answer, answer
            assert time.monotonic() - started < 5
        assert httpx.get(base + "/api/health").status_code == 200
