"""The web page in a real headless Chromium (Debian's, driven by Playwright; no browser is
downloaded): upload, drag-and-drop, line boxes and texts, language switch, export, and nothing
loaded from anywhere but the server."""
from __future__ import annotations

import base64
import shutil
from pathlib import Path

import cv2
import httpx
import pytest

from fedocr.data import SyntheticLines
from fedocr.serve.engine import load_engine
from fedocr.export import export_onnx
from serve_fixtures import CHROMIUM, chromium_page, live_server, png, render_page

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (scripts/setup.sh)")]


@pytest.fixture(scope="module")
def served(trained_digits_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("web")
    model = shutil.copy(trained_digits_model.path, folder / "digits.pt")
    export_onnx(model, folder / "digits.onnx")
    with live_server(Path(model)) as base:
        yield base, load_engine(model)


@pytest.fixture()
def page(served):
    with chromium_page() as page:
        yield page


def readable_line(engine, charset, tmp_path: Path) -> tuple[Path, str]:
    """A rendered line that the trained model reads correctly, saved as PNG."""
    data = SyntheticLines("digits", 20, seed=314, charset=charset)
    for i in range(len(data)):
        image, text = data[i]
        if engine.ocr(image).text == text:
            path = tmp_path / "line.png"
            cv2.imwrite(str(path), image)
            return path, text
    raise AssertionError("the trained test model read none of 20 lines")


def test_uploaded_image_shows_its_recognised_text_box_and_confidence(served, page, trained_digits_model, tmp_path):
    base, engine = served
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(base + "/")
    path, text = readable_line(engine, trained_digits_model.charset, tmp_path)
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#lines li")
    assert page.inner_text("#lines li .line-text") == text
    assert page.locator("#lines li .line-text span").count() == len(text)  # one per character, low ones marked
    assert page.input_value("#text") == text
    assert page.inner_text("#lines li .conf").endswith("%")
    width = page.evaluate("document.getElementById('canvas').width")
    assert width == cv2.imread(str(path)).shape[1]
    with page.expect_download() as download:
        page.click("#save-txt")
    assert Path(download.value.path()).read_text(encoding="utf-8") == text + "\n"
    assert requested and all(url.startswith((base, "blob:" + base)) for url in requested), requested


def test_dropped_page_lists_every_line_and_the_page_switches_to_chinese(served, page):
    base, _ = served
    doc = render_page(4, seed=17)
    page.goto(base + "/")
    page.evaluate("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "form.png", {type: "image/png"}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
    }""", base64.b64encode(png(doc.image)).decode())
    page.wait_for_selector("#lines li")
    api = httpx.post(base + "/api/ocr", files={"image": ("form.png", png(doc.image))}).json()
    assert page.locator("#lines li").count() == len(api["lines"]) == len(doc.boxes)
    assert page.input_value("#text") == api["text"]
    page.click("#lang")
    assert page.inner_text("#copy") == "复制全部"
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    assert "行" in page.inner_text("#summary")


def test_a_file_that_is_not_an_image_shows_a_message_not_a_crash(served, page, tmp_path):
    base, _ = served
    page.goto(base + "/")
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"definitely not a PNG")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#status.error")
    assert "not an image" in page.inner_text("#status")


def test_several_files_get_one_result_each_an_error_replaces_the_result_and_a_cached_answer_says_so(
        served, page, trained_digits_model, tmp_path):
    base, engine = served
    page.goto(base + "/")
    line, text = readable_line(engine, trained_digits_model.charset, tmp_path)
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"definitely not a PNG")
    page.set_input_files("#file", [str(line), str(bad)])
    page.wait_for_selector("#files button.failed")
    assert page.locator("#files button").count() == 2
    assert page.inner_text("#lines li .line-text") == text and page.is_visible("#result")
    page.click("#files button.failed")                     # the second file's error, not the first's result
    assert page.is_hidden("#result") and "not an image" in page.inner_text("#status.error")
    page.click("#lang")
    assert page.inner_text("#status").startswith("无法把这个文件当作图片读取")
    page.click("#lang")
    page.click("#files button >> nth=0")
    page.wait_for_selector("#result:not([hidden])")
    assert page.inner_text("#lines li .line-text") == text

    page.set_input_files("#file", str(line))               # the same image again: the server's cache answers
    page.wait_for_selector("#status:has-text('cache')")   # (the page's CSP forbids evaluated strings)
    assert page.is_hidden("#files") and page.inner_text("#lines li .line-text") == text
    icon = httpx.get(base + "/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg")
