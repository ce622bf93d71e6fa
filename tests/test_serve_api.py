"""The REST API through FastAPI's TestClient: every endpoint, every bad input, the cache, auth,
concurrency and hot swap; and a real `fedocr serve` process for reloads under load."""
from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from fedocr.data import SyntheticLines
from fedocr.serve.app import ServeConfig, create_app
from fedocr.export import export_onnx
from fedocr.serve.images import Limits
from serve_fixtures import SMALL, dot_grid, live_server, png, png_header_only, random_model, render_page


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api-model")
    pt = random_model(folder / "model.pt", provenance={"kind": "federated", "run_id": "three-orgs-7", "round": 12})
    from serve_fixtures import fixed_lines_small

    return export_onnx(pt, folder / "model.onnx", lines=fixed_lines_small()).path


@pytest.fixture()
def client(onnx_model):
    with TestClient(create_app(ServeConfig(model=onnx_model))) as c:
        yield c


def line_png(seed: int = 0) -> bytes:
    return png(SyntheticLines("digits", 1, seed=seed, charset=SMALL)[0][0])


def post(client, data: bytes, field: str = "image", name: str = "x.png", **kw):
    return client.post("/api/ocr", files={field: (name, data, "image/png")}, **kw)


def test_ocr_answers_text_lines_confidence_time_and_model(client):
    r = post(client, line_png())
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"text", "lines", "confidence", "time_ms", "model"}
    assert len(body["lines"]) == 1 and len(body["lines"][0]["box"]) == 4
    assert 0 <= body["confidence"] <= 1 and body["time_ms"] >= 0
    assert body["model"] == client.get("/api/model").json()["version"]


def test_trained_model_reads_an_uploaded_line(trained_digits_model, tmp_path):
    path = shutil.copy(trained_digits_model.path, tmp_path / "digits.pt")
    data = SyntheticLines("digits", 6, seed=90, charset=trained_digits_model.charset)
    with TestClient(create_app(ServeConfig(model=path))) as c:
        answers = [post(c, png(data[i][0])).json()["text"] for i in range(6)]
    assert sum(a == data[i][1] for i, a in enumerate(answers)) >= 4


def test_each_character_comes_with_its_confidence_and_x_range_inside_the_line(trained_digits_model, tmp_path):
    path = shutil.copy(trained_digits_model.path, tmp_path / "digits.pt")
    data = SyntheticLines("digits", 4, seed=91, charset=trained_digits_model.charset)
    with TestClient(create_app(ServeConfig(model=path))) as c:
        for i in range(4):
            (line,) = post(c, png(data[i][0])).json()["lines"]
            chars = line["chars"]
            assert "".join(ch["char"] for ch in chars) == line["text"]
            starts = [ch["x"][0] for ch in chars]
            assert starts == sorted(starts)  # left to right, as written
            for ch in chars:
                assert line["box"][0] <= ch["x"][0] < ch["x"][1] <= line["box"][2] and 0 <= ch["confidence"] <= 1


def test_layout_parameter_reads_a_page_as_one_line_or_refuses_an_unknown_layout(client):
    page = png(render_page(3, seed=12, rules=False).image)
    assert len(post(client, page).json()["lines"]) >= 3
    assert len(client.post("/api/ocr?layout=line", files={"image": ("p.png", page, "image/png")}).json()["lines"]) == 1
    bad = client.post("/api/ocr?layout=columns", files={"image": ("p.png", page, "image/png")})
    assert bad.status_code == 422 and "layout" in bad.text


def test_page_upload_returns_a_box_per_line_and_text_in_reading_order(client):
    page = render_page(5, seed=8)
    body = post(client, png(page.image)).json()
    assert len(body["lines"]) == len(page.boxes)
    assert body["text"].count("\n") == len(page.texts) - 1
    assert body["width"] == page.image.shape[1] and body["height"] == page.image.shape[0]


def test_same_image_twice_is_answered_from_the_cache(client):
    data = line_png(3)
    first, second = post(client, data).json(), post(client, data).json()
    assert not first["cached"] and second["cached"]
    assert first["text"] == second["text"] and first["lines"] == second["lines"]


def test_batch_answers_each_image_on_its_own(client):
    files = [("images", ("a.png", line_png(1), "image/png")), ("images", ("b.txt", b"hello", "text/plain")),
             ("images", ("c.png", png(render_page(3, seed=2).image), "image/png"))]
    r = client.post("/api/ocr/batch", files=files)
    assert r.status_code == 200
    items = r.json()["results"]
    assert [i["status"] for i in items] == [200, 400, 200]
    assert "not an image" in items[1]["error"] and items[1]["result"] is None
    assert len(items[2]["result"]["lines"]) >= 3


def test_health_is_open_and_names_the_model(client):
    body = client.get("/api/health").json()
    assert body["status"] == "ok" and body["backend"] == "onnx" and len(body["model"]) == 12


def test_model_reports_version_charset_size_and_federated_provenance(client):
    body = client.get("/api/model").json()
    assert body["charset_size"] == len(SMALL)
    assert body["run"] == "three-orgs-7" and body["round"] == 12
    assert body["provenance"]["export"]["parity"]["passed"] is True
    assert body["file"] == "model.onnx"        # the file name only, not the server's folders


def test_openapi_docs_and_web_page_are_served(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/api/ocr", "/api/ocr/batch", "/api/health", "/api/model", "/api/model/reload"} <= set(schema["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "fedocr" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    assert "http" not in client.get("/static/app.js").text.replace("http.", "")  # nothing fetched from elsewhere


def test_docs_show_the_package_version_and_the_limits_in_mib(client):
    from fedocr import __version__

    info = client.get("/openapi.json").json()["info"]
    assert info["version"] == __version__
    assert "10 MiB and 40,000,000 pixels" in info["description"] and "40 MiB per batch" in info["description"]
    assert "500 text lines" in info["description"]


def test_more_lines_than_the_limit_is_a_422_before_any_line_is_recognised(onnx_model, monkeypatch):
    grid = png(dot_grid(1000))  # 3 KB that segments into 10,000 "lines"
    with TestClient(create_app(ServeConfig(model=onnx_model))) as c:
        engine = c.app.state.fedocr.slot.engine
        recognize = engine.recognize
        monkeypatch.setattr(engine, "recognize", lambda *_: pytest.fail("recognised a line of the dot grid"))
        started = time.perf_counter()
        r = post(c, grid)
        assert r.status_code == 422 and "more than 500 text lines" in r.json()["detail"], r.text
        assert time.perf_counter() - started < 5  # segmentation only (was 16-20 s of recognition)
        monkeypatch.setattr(engine, "recognize", recognize)
        files = [("images", ("grid.png", grid, "image/png")), ("images", ("line.png", line_png(), "image/png"))]
        items = c.post("/api/ocr/batch", files=files).json()["results"]
        assert [i["status"] for i in items] == [422, 200] and "more than 500 text lines" in items[0]["error"]
    page = png(render_page(3, seed=2, two_columns=False).image)
    with TestClient(create_app(ServeConfig(model=onnx_model, max_lines=2))) as c:  # the limit is the server's
        r = post(c, page)
        assert r.status_code == 422 and "more than 2 text lines" in r.json()["detail"]
        assert post(c, page, params={"layout": "line"}).status_code == 200


@pytest.mark.parametrize("data, status, message", [
    (b"this is not an image", 400, "not an image"),
    (b"", 400, "empty"),
    (png_header_only(0, 10), 400, ""),
    (png_header_only(100_000, 100_000), 413, "pixels"),
    (b"\x00" * 100, 400, "not an image"),
], ids=["not-an-image", "empty-body", "zero-pixels", "decompression-bomb", "zeros"])
def test_bad_uploads_get_a_clear_4xx(client, data, status, message):
    r = post(client, data)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_truncated_png_is_a_400(client):
    data = png(render_page(3, seed=1).image)
    r = post(client, data[: len(data) // 2])
    assert r.status_code == 400 and "truncated" in r.json()["detail"]


def test_wrong_field_name_is_a_422_naming_the_field(client):
    r = post(client, line_png(), field="file")
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "image"]


def test_request_without_multipart_body_is_a_4xx(client):
    assert client.post("/api/ocr").status_code == 422
    assert client.post("/api/ocr", content=b"raw", headers={"content-type": "image/png"}).status_code == 422
    assert client.post("/api/ocr", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}).status_code in (400, 422)


def test_too_many_files_is_a_413(client):
    files = [("images", (f"{i}.png", line_png(), "image/png")) for i in range(17)]
    r = client.post("/api/ocr/batch", files=files)
    assert r.status_code == 413 and "at most 16" in r.json()["detail"]


def test_body_over_the_byte_limit_is_a_413_before_decoding(onnx_model):
    limits = Limits(max_bytes=50_000)
    with TestClient(create_app(ServeConfig(model=onnx_model, limits=limits))) as c:
        r = post(c, b"\x89PNG" + b"\x00" * 200_000)
        assert r.status_code == 413 and "bytes" in r.json()["detail"]


def test_image_over_the_pixel_limit_is_a_413(onnx_model):
    with TestClient(create_app(ServeConfig(model=onnx_model, limits=Limits(max_pixels=10_000)))) as c:
        r = post(c, png(np.full((200, 200), 255, np.uint8)))
        assert r.status_code == 413 and "10000 pixels" in r.json()["detail"]


def test_token_protects_the_api_but_not_health(onnx_model):
    with TestClient(create_app(ServeConfig(model=onnx_model, token="s3cret"))) as c:
        assert post(c, line_png()).status_code == 401
        assert post(c, line_png(), headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert post(c, line_png(), headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/model").status_code == 401
        assert c.post("/api/model/reload").status_code == 401
        assert c.get("/api/health").status_code == 200


def test_no_cors_headers_unless_asked_for(onnx_model, client):
    origin = {"Origin": "https://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/api/health", headers=origin).headers
    with TestClient(create_app(ServeConfig(model=onnx_model, cors_origins=("https://elsewhere.example",)))) as c:
        assert c.get("/api/health", headers=origin).headers["access-control-allow-origin"] == "https://elsewhere.example"


def test_uploads_stay_in_memory_and_are_not_logged(client, monkeypatch, caplog):
    import tempfile

    from starlette import formparsers

    spooled = []

    class Recording(tempfile.SpooledTemporaryFile):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            spooled.append(self)

    monkeypatch.setattr(formparsers, "SpooledTemporaryFile", Recording)
    rng = np.random.default_rng(0)
    big = png(rng.integers(0, 255, (1200, 1200), dtype=np.uint8))     # ~1.4 MB: over Starlette's 1 MiB spool
    assert len(big) > 1024 * 1024
    with caplog.at_level(logging.DEBUG):
        r = post(client, big, name="patient-zhang-san.png")
    assert r.status_code == 200
    assert spooled and not any(f._rolled for f in spooled)   # never rolled over to a temporary file on disk
    assert "patient-zhang-san" not in caplog.text


def test_recognition_runs_off_the_event_loop(onnx_model):
    """A slow recognition must not stop the server from answering other requests."""
    app = create_app(ServeConfig(model=onnx_model))

    async def scenario() -> tuple[float, float]:
        async with app.router.lifespan_context(app):
            engine = app.state.fedocr.slot.engine
            original = engine.ocr

            def slow(image, beam_width=0, layout="auto", **kwargs):
                time.sleep(1.5)
                return original(image, beam_width, layout, **kwargs)

            engine.ocr = slow
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                start = time.perf_counter()
                slow_task = asyncio.create_task(c.post("/api/ocr", files={"image": ("a.png", line_png(5))}))
                await asyncio.sleep(0.2)
                health = await c.get("/api/health")
                health_at = time.perf_counter() - start
                assert health.status_code == 200
                assert (await slow_task).status_code == 200
                return health_at, time.perf_counter() - start

    health_at, slow_done = asyncio.run(scenario())
    assert health_at < 1.0 < slow_done


def test_reload_swaps_the_model_and_clears_the_cache(tmp_path):
    model = tmp_path / "live.onnx"
    export_onnx(random_model(tmp_path / "a.pt", seed=1), model, lines=_lines())
    with TestClient(create_app(ServeConfig(model=model))) as c:
        before = c.get("/api/model").json()["version"]
        post(c, line_png(7))
        export_onnx(random_model(tmp_path / "b.pt", seed=2, provenance={"run_id": "r", "round": 2}), model, lines=_lines())
        r = c.post("/api/model/reload")
        assert r.status_code == 200 and r.json()["changed"] is True
        assert r.json()["model"]["version"] != before and r.json()["model"]["round"] == 2
        answer = post(c, line_png(7)).json()
        assert answer["model"] == r.json()["model"]["version"] and not answer["cached"]


def test_failed_reload_keeps_the_old_model_serving(tmp_path):
    model = tmp_path / "live.onnx"
    export_onnx(random_model(tmp_path / "a.pt"), model, lines=_lines())
    with TestClient(create_app(ServeConfig(model=model))) as c:
        version = c.get("/api/health").json()["model"]
        model.write_bytes(b"not a model at all")
        r = c.post("/api/model/reload")
        assert r.status_code == 409 and version in r.json()["detail"]
        assert post(c, line_png()).status_code == 200
        assert c.get("/api/health").json()["model"] == version


def test_a_swap_to_another_vocabulary_or_a_model_that_cannot_read_is_refused_unless_forced(tmp_path):
    from fedocr.charset import default_charset
    from fedocr.model import CRNN, ModelConfig, save_checkpoint
    from fedocr.model.shipped import base_checkpoint

    model = tmp_path / "live.pt"
    shutil.copy(base_checkpoint(), model)                    # the shipped model reads the built-in line
    with TestClient(create_app(ServeConfig(model=model))) as c:
        health = c.get("/api/health").json()
        served, good_cer = health["model"], health["builtin_line_cer"]
        assert health["charset_version"] == default_charset().version and good_cer < 0.25
        save_checkpoint(model, CRNN(ModelConfig(len(default_charset()), "tiny")), default_charset(), {"kind": "test"})
        r = c.post("/api/model/reload")                      # same vocabulary, reads nothing
        assert r.status_code == 409 and "built-in line" in r.json()["detail"] and served in r.json()["detail"]
        assert c.get("/api/health").json()["model"] == served
        random_model(model, seed=3)                          # another vocabulary
        r = c.post("/api/model/reload")
        assert r.status_code == 409 and "vocabulary" in r.json()["detail"]
        assert post(c, line_png()).json()["model"] == served
        forced = c.post("/api/model/reload", params={"force": "true"})
        assert forced.status_code == 200 and c.get("/api/health").json()["charset_version"] == SMALL.version


def test_an_onnx_file_whose_charset_does_not_match_its_graph_is_refused(onnx_model, tmp_path):
    import json

    import onnx

    from fedocr.charset import Charset
    from fedocr.serve.engine import ModelLoadError, load_engine

    proto = onnx.load(str(onnx_model))
    for prop in proto.metadata_props:
        if prop.key == "charset":
            prop.value = json.dumps(Charset(list("0123")).to_dict())
    bad = tmp_path / "mislabelled.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(ModelLoadError, match=f"outputs {len(SMALL)} classes but its charset has 5"):
        load_engine(bad)


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_a_page_scanned_sideways_or_upside_down_is_read_upright_and_says_its_angle(turns, tmp_path):
    from fedocr.model.shipped import base_checkpoint
    from fedocr.serve.engine import load_engine

    engine = load_engine(base_checkpoint())
    page = render_page(5, seed=turns, charset=engine.charset).image
    upright = engine.ocr(page)
    assert upright.angle == 0 and upright.confidence > 0.9 and upright.warning is None
    turned = np.ascontiguousarray(np.rot90(page, -turns))                # the scan, turned clockwise
    with TestClient(create_app(ServeConfig(model=base_checkpoint()))) as c:
        answer = post(c, png(turned)).json()
    assert answer["angle"] == 90 * turns and answer["text"] == upright.text
    assert (answer["width"], answer["height"]) == (page.shape[1], page.shape[0])   # boxes refer to the upright page


def test_a_model_that_reads_junk_warns_and_turns_nothing(client):
    answer = post(client, png(render_page(3, seed=1).image)).json()          # a random model: low confidence
    assert answer["angle"] == 0 and "low confidence" in answer["warning"]


def _lines():
    from serve_fixtures import fixed_lines_small

    return fixed_lines_small(4)


@pytest.mark.slow
def test_hot_swap_under_load_fails_no_request_and_watch_picks_up_new_models(tmp_path):
    """A real `fedocr serve --watch`: clients keep posting while the model file is replaced
    twice (once picked up by the watcher, once by POST /api/model/reload)."""
    model = tmp_path / "global.onnx"
    export_onnx(random_model(tmp_path / "r1.pt", seed=1), model, lines=_lines())
    images = [line_png(i) for i in range(6)] + [png(render_page(3, seed=4).image)]
    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    with live_server(model, "--watch", "0.3", "--cache", "0") as base:
        first = httpx.get(base + "/api/health").json()["model"]

        def client_loop(offset: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                i = offset
                while not stop.is_set():
                    r = http.post("/api/ocr", files={"image": ("x.png", images[i % len(images)])})
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        versions.add(r.json()["model"])
                    i += 1

        threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            export_onnx(random_model(tmp_path / "r2.pt", seed=2), model, lines=_lines())   # atomic replace
            deadline = time.monotonic() + 20
            while httpx.get(base + "/api/health").json()["model"] == first and time.monotonic() < deadline:
                time.sleep(0.2)
            second = httpx.get(base + "/api/health").json()["model"]
            export_onnx(random_model(tmp_path / "r3.pt", seed=3), model, lines=_lines())
            reloaded = httpx.post(base + "/api/model/reload", timeout=60).json()["model"]["version"]
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
    assert second != first, "the watcher did not pick up the new model"
    assert reloaded not in (first, second)
    assert statuses and set(statuses) == {200}
    assert {first, second} <= versions
