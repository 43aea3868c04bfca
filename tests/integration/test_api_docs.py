"""The API's documentation offline (service/api/docs.py): Swagger UI at /docs and ReDoc at /redoc load only files
served by the app itself, and render the app's OpenAPI document in a real (headless) Chromium; every problem the
API answers has its own documented `type` (/problems/<slug>), never about:blank."""
from __future__ import annotations

import ast
import re
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest

from service.errors import KINDS, PROBLEM_JSON, PROBLEM_TYPES, slug

ROOT = Path(__file__).resolve().parents[2]


class Links(HTMLParser):
    """Every src and href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def links(html: str) -> list[str]:
    parser = Links()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_doc_pages_reference_only_local_files_that_the_app_serves(api, page):
    resp = api.client.get(page)  # no key needed
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    html = resp.data.decode()
    assert "/v1/openapi.json" in html
    urls = links(html)
    assert urls and not re.search(r"https?://|//cdn", html)
    for url in urls:
        assert url.startswith("/docs/assets/"), url
        asset = api.client.get(url)
        assert asset.status_code == 200 and len(asset.data) > 10_000, url
        assert asset.mimetype in ("text/javascript", "application/javascript", "text/css"), (url, asset.mimetype)


def test_the_vendored_files_are_package_data():
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["service"]
    static = ROOT / "service" / "api" / "static"
    shipped = {p for pattern in globs for p in (ROOT / "service").glob(pattern)}
    assert {p for p in static.rglob("*") if p.is_file()} <= shipped
    assert (static / "swagger-ui" / "swagger-ui-bundle.js").is_file()
    assert (static / "redoc" / "redoc.standalone.js").is_file()
    assert "swagger-ui-dist 5.35.0" in (static / "VERSIONS.txt").read_text()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_every_problem_answered_has_its_own_documented_type(api, runtime):
    no_key = api.client
    answers = {
        "Unauthorized": no_key.get("/v1/jobs"),
        "Not found": api.get("/v1/jobs/nope"),
        "Method not allowed": api.client.put("/v1/jobs", headers=api._h(None)),
        "Unprocessable entity": api.post("/v1/jobs", json={"model": "minilm-rt"}),
        "Invalid request": api.post("/v1/jobs", json={"model": "no-such", "inputs": {"text": "hi"},
                                                     "methods": ["gradient"]}),
        "Bad request": api.post("/v1/jobs", data=b"{not json", headers={"Content-Type": "application/json"}),
        "Request entity too large": api.post("/v1/jobs", data=b"x" * (runtime.settings.max_body_bytes + 1),
                                             headers={"Content-Type": "application/json"}),
        "Request header fields too large": api.get("/v1/jobs", headers={"X-Big": "x" * 20_000}),
        "Bad cursor": api.get("/v1/jobs?cursor=garbage"),
    }
    for title, resp in answers.items():
        body = resp.get_json()
        assert resp.mimetype == PROBLEM_JSON, title
        assert body["type"] == PROBLEM_TYPES + slug(title) and body["type"] != "about:blank", (title, body)
        assert body["title"].lower() == title.lower() and body["status"] == KINDS[slug(title)].status, body
        page = api.client.get(body["type"])  # the type resolves, against the API's URL, to its description
        assert page.status_code == 200 and title.lower() in page.data.decode().lower()
    assert api.client.get(f"{PROBLEM_TYPES}no-such-kind").get_json()["type"] == PROBLEM_TYPES + "not-found"


def test_every_problem_title_in_the_code_is_a_documented_kind():
    """Every Problem(status, "Title", …) the service and the worker build is in KINDS, and docs/api.md lists each
    kind's type and status."""
    titles = set()
    for path in [*(ROOT / "service").rglob("*.py"), *(ROOT / "worker").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Problem" and len(node.args) > 1:
                title = node.args[1]
                if isinstance(title, ast.Constant):
                    titles.add((title.value, node.args[0].value if isinstance(node.args[0], ast.Constant) else None))
    assert len(titles) > 15
    for title, status in titles:
        assert slug(title) in KINDS, title
        assert status in (None, KINDS[slug(title)].status), (title, status)
    api_md = (ROOT / "docs" / "api.md").read_text()
    for kind_slug, kind in KINDS.items():
        assert re.search(rf"`{PROBLEM_TYPES}{kind_slug}` \| {kind.status} \|", api_md), kind_slug
    assert "about:blank" not in api_md


@pytest.fixture
def served(runtime):
    """The app on a real HTTP port, for the browser."""
    from werkzeug.serving import make_server

    from service.app import create_app

    server = make_server("127.0.0.1", 0, create_app(runtime=runtime), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("page", "rendered"), [
    ("/docs", ".swagger-ui .info .title"),  # Swagger UI drew the document's title
    ("/redoc", ".api-info h1"),  # so did ReDoc
])
def test_doc_pages_render_the_api_in_a_browser(served, tmp_path, page, rendered):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(served + page)
        title = WebDriverWait(driver, 60).until(expected_conditions.visibility_of_element_located(
            (By.CSS_SELECTOR, rendered)))
        assert title.text.startswith("Lantern")
        assert "/v1/jobs" in driver.find_element(By.TAG_NAME, "body").text
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(url.startswith(served) for url in loaded), loaded  # nothing from elsewhere
        driver.save_screenshot(str(tmp_path / f"{page.strip('/')}.png"))
    finally:
        driver.quit()
