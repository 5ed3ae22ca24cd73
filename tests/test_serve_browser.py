"""The web page end to end in headless Chromium (Debian ``chromium``, driven by Playwright).

Set ``XRAYAGE_SCREENSHOT=docs/web-page.png`` to refresh the screenshot in the docs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi", reason="needs the 'serve' extra")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the 'test' extra)")

from xrayage import XRayAge  # noqa: E402
from xrayage.serve.app import create_app  # noqa: E402

from .dicom_factory import to_bytes  # noqa: E402
from .onnx_factory import build_tiny_model  # noqa: E402
from .serve_support import chest_dataset, live_server  # noqa: E402
from .shared import NEMA  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEY = "browser-test-key-0123456789"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(180),
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found (apt-get install chromium; "
                       "CI installs it)"),
]


@pytest.fixture(scope="module")
def estimator(tmp_path_factory: pytest.TempPathFactory) -> XRayAge:
    return XRayAge.load(build_tiny_model(tmp_path_factory.mktemp("tiny")), threads=1)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Playwright gives each launch a new temporary profile (it refuses --user-data-dir).
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1180, "height": 760})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def radiograph(tmp_path: Path) -> Path:
    """The NEMA chest CR if the shared data is there, else a synthetic chest DICOM."""
    if NEMA.is_file():
        return NEMA
    path = tmp_path / "chest.dcm"
    path.write_bytes(to_bytes(chest_dataset()))
    return path


def test_drop_a_radiograph_and_see_the_result(page: Any, estimator: XRayAge,
                                              tmp_path: Path) -> None:
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    source = radiograph(tmp_path)
    with live_server(create_app(estimator)) as url:
        page.goto(url + "/")
        sync_api.expect(page.locator("#model")).to_contain_text("tiny-test")
        assert not page.locator("#key-row").is_visible()  # no key needed here
        page.set_input_files("#file", str(source))
        sync_api.expect(page.locator("#status")).to_have_text("Done.")
        expected = httpx.post(f"{url}/v1/predict",
                              files={"file": ("x.dcm", source.read_bytes())}).json()
        assert page.locator("#xray-age").inner_text() == f"{expected['xray_age']:.1f}"
        assert "90% interval" in page.locator("#interval").inner_text()
        assert page.locator("#gap").inner_text().endswith("years")
        assert page.locator("#qc-status").inner_text() in ("ok", "warn")
        assert page.eval_on_selector("#heatmap", "img => img.naturalWidth") > 100
        page.wait_for_timeout(200)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        if os.environ.get("XRAYAGE_SCREENSHOT"):
            page.screenshot(path=os.environ["XRAYAGE_SCREENSHOT"], full_page=True)
    assert requests and all(u.startswith(url) or u.startswith("data:") for u in requests), (
        "the page must load nothing from outside the server")


def test_typed_age_gives_a_gap_and_errors_are_shown(page: Any, estimator: XRayAge,
                                                    tmp_path: Path) -> None:
    png = tmp_path / "chest.png"
    from .serve_support import gray_png

    png.write_bytes(gray_png())
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image\n")
    with live_server(create_app(estimator)) as url:
        page.goto(url + "/")
        page.fill("#age", "70")
        page.set_input_files("#file", str(png))
        sync_api.expect(page.locator("#status")).to_have_text("Done.")
        assert page.locator("#chrono").inner_text() == "70.0 years"
        assert page.locator("#gap").inner_text() != "–"
        page.set_input_files("#file", str(junk))
        sync_api.expect(page.locator("#status")).to_contain_text("Error 415")
        sync_api.expect(page.locator("#status")).to_contain_text("not a DICOM, PNG or JPEG")


def test_api_key_prompt(page: Any, estimator: XRayAge, tmp_path: Path) -> None:
    source = tmp_path / "chest.dcm"
    source.write_bytes(to_bytes(chest_dataset()))
    with live_server(create_app(estimator, api_key=KEY)) as url:
        page.goto(url + "/")
        sync_api.expect(page.locator("#key-row")).to_be_visible()
        page.fill("#api-key", KEY)
        page.locator("#api-key").dispatch_event("change")
        sync_api.expect(page.locator("#model")).to_contain_text("tiny-test")
        page.set_input_files("#file", str(source))
        sync_api.expect(page.locator("#status")).to_have_text("Done.")


def test_key_typed_then_upload_names_the_model(page: Any, estimator: XRayAge,
                                               tmp_path: Path) -> None:
    source = tmp_path / "chest.dcm"
    source.write_bytes(to_bytes(chest_dataset()))
    with live_server(create_app(estimator, api_key=KEY)) as url:
        page.goto(url + "/")
        sync_api.expect(page.locator("#model")).to_contain_text("enter the API key")
        page.fill("#api-key", KEY)  # no change event: the upload itself uses the key
        page.set_input_files("#file", str(source))
        sync_api.expect(page.locator("#status")).to_have_text("Done.")
        sync_api.expect(page.locator("#model")).to_contain_text("tiny-test")
        box = page.locator("#key-row").bounding_box()
        drop = page.locator("#drop").bounding_box()
        assert box["y"] + box["height"] < drop["y"]  # the key box does not touch the drop zone


def test_a_refusal_says_why_and_shows_no_heat_map(page: Any, estimator: XRayAge,
                                                  tmp_path: Path) -> None:
    lateral = tmp_path / "lateral.dcm"
    lateral.write_bytes(to_bytes(chest_dataset(ViewPosition="LL")))
    with live_server(create_app(estimator)) as url:
        assert httpx.head(url + "/").status_code == 200
        page.goto(url + "/")
        page.set_input_files("#file", str(lateral))
        sync_api.expect(page.locator("#status")).to_contain_text("refused")
        sync_api.expect(page.locator("#refused")).to_be_visible()
        assert page.locator("#xray-age").inner_text() == "–"
        assert "lateral" in page.locator("#qc-messages").inner_text()
        assert not page.locator("#heatmap-figure").is_visible()
