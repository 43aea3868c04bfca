"""result.html in a real browser (Debian's chromium through selenium): opened from disk with the network off, it
makes no request, its script runs under its own CSP, the numbers in the DOM are the result document's, keyboard
focus shows the raw values, and no payload in a user string executes. Each test saves a screenshot (into
$LANTERN_SCREENSHOTS when set)."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from tests.unit.test_page_views import PAYLOADS, load, poisoned
from worker.render.page import result_html

CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(DRIVER).exists()), reason="no chromium")]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                                "downloadThroughput": 0, "uploadThroughput": 0})
    yield driver
    driver.quit()


def open_page(browser, tmp_path: Path, document: dict, name: str) -> list[dict]:
    """Write the document's result.html, open it from disk, and return the browser's console entries."""
    path = tmp_path / f"{name}.html"
    path.write_text(result_html(document), encoding="utf-8")
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(path.as_uri())
    browser.execute_script("return document.readyState")
    return browser.get_log("browser")


def screenshot(browser, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("LANTERN_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(height + 40, 4000))
    assert browser.save_screenshot(str(folder / f"{name}.png"))
    browser.set_window_size(1280, 1000)


def close(shown: str, value: float) -> bool:
    return math.isclose(float(shown), value, rel_tol=6e-3, abs_tol=1e-12)


def test_result_html_offline_shows_the_documents_numbers(browser, tmp_path):
    result = load("minilm-rt")
    log = open_page(browser, tmp_path, {"result": result, "status": "succeeded"}, "result-minilm")
    assert browser.execute_script("return document.querySelector('[data-lantern-view]').dataset.ready") == "true"
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert not [e for e in log if e["level"] == "SEVERE"], log  # no CSP refusal, no script error
    probabilities = browser.execute_script(
        "return [...document.querySelectorAll('.probs tr')].map(r => [r.cells[0].textContent, r.cells[1].textContent])")
    assert len(probabilities) == len(result["prediction"]["probabilities"])
    assert all(close(p, result["prediction"]["probabilities"][label]) for label, p in probabilities)
    # every word's value on hover (the script copies it from the page's JSON) equals the document's
    runs = browser.execute_script("""
        return [...document.querySelectorAll('.text[data-m]')].map(t => {
          const values = [...t.children].map(s => {  // hover (hidden panels take no focus)
            s.dispatchEvent(new MouseEvent('mouseover', {bubbles: true})); return s.getAttribute('data-v'); });
          return [t.closest('[data-r]').dataset.r, t.dataset.m, t.dataset.u, values];
        })""")
    methods = [m for m, p in result["methods"].items() if "word_scores" in p and len(p["scores"]) == len(result["tokens"])]
    assert {(m, u) for _, m, u, _ in runs} == {(m, u) for m in methods for u in ("word_scores", "scores")}
    for r, method, unit, values in runs:
        expected = result["methods"][method][unit]
        assert r == "0" and len(values) == len(expected)
        assert all(close(v, x) for v, x in zip(values, expected, strict=True)), (method, unit)
    faith = browser.execute_script(
        "return [...document.querySelectorAll('table.faith tbody tr')].map(r => [...r.cells].map(c => c.textContent))")
    for method, comp, suff, rnd, rnd_suff, lift, normal_comp, normal_suff in faith:
        f = result["methods"][method]["faithfulness"]
        normal = f.get("normalized") or {}
        for shown, key in ((normal_comp, "comprehensiveness"), (normal_suff, "sufficiency")):
            assert shown == "–" if normal.get(key) is None else close(shown, normal[key])
        assert close(comp, f["comprehensiveness"]) and close(suff, f["sufficiency"]) and close(lift, f["lift"])
        assert close(rnd, f["random"]["comprehensiveness"]) and close(rnd_suff, f["random"]["sufficiency"])
    screenshot(browser, tmp_path, "result-minilm")


def test_keyboard_reaches_the_words_and_the_switchers(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    result = load("cnn-rt")
    open_page(browser, tmp_path, {"result": result}, "result-keyboard")
    visible = "el => el.offsetParent !== null"
    shown = browser.execute_script(f"return [...document.querySelectorAll('section.method')].filter({visible}).length")
    assert shown == 1  # the method switcher shows one method at a time
    for _ in range(30):  # tab until a word of the shown text has the focus
        ActionChains(browser).send_keys(Keys.TAB).perform()
        if browser.execute_script("return document.activeElement.parentNode.classList.contains('text')"):
            break
    first = result["methods"][next(iter(result["methods"]))]["word_scores"]
    active = "document.activeElement"
    assert close(browser.execute_script(f"return {active}.dataset.v"), first[0])
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT).perform()
    assert browser.execute_script(f"return {active}.textContent") == result["word_strings"][1]
    after = browser.execute_script(f"return getComputedStyle({active}, '::after').content")
    assert close(json.loads(after), first[1])  # the focused word shows its raw value
    browser.execute_script("document.querySelector('[data-choose=tokens]').click()")
    assert browser.execute_script(f"return [...document.querySelectorAll('[data-unit=words]')].filter({visible}).length") == 0
    screenshot(browser, tmp_path, "result-keyboard")


def test_payloads_in_user_strings_stay_text(browser, tmp_path):
    log = open_page(browser, tmp_path, poisoned(), "result-xss")
    assert browser.execute_script("return document.querySelector('[data-lantern-view]').dataset.ready") == "true"
    assert browser.execute_script("return window.__xss") is None
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    assert browser.execute_script("return document.querySelectorAll('script').length") == 2  # the data, viewer.js
    text = browser.execute_script("return document.body.textContent")
    assert all(p in text for p in PAYLOADS)
    assert not [e for e in log if e["level"] == "SEVERE"], log
    screenshot(browser, tmp_path, "result-xss")


def test_esim_and_sigma_views(browser, tmp_path):
    open_page(browser, tmp_path, {"result": load("esim-50")}, "result-esim")
    tips = browser.execute_script("return [...document.querySelectorAll('svg.matrix rect title')].length")
    part = load("esim-50")["methods"]["attention_saliency"]
    assert tips == 2 * len(part["premise_tokens"]) * len(part["hypothesis_tokens"])
    screenshot(browser, tmp_path, "result-esim")
    open_page(browser, tmp_path, {"result": load("minilm-rt")}, "result-sigma")
    layers = browser.execute_script("return [...document.querySelectorAll('.sigma .multiple .layer')].map(e => e.textContent)")
    assert layers == list(load("minilm-rt")["methods"]["sigma"]["layers"])
    browser.execute_script("document.querySelector('section.sigma').scrollIntoView()")
    screenshot(browser, tmp_path, "result-sigma")


def test_audit_report_pages_its_items_and_opens_each_items_token_view(browser, tmp_path):
    from worker.render.page import report_html
    from worker.report import aggregate

    cnn = load("cnn-rt")
    keep = ("tokens", "special", "words", "word_strings", "prediction", "target", "methods")
    rows = [{"model": "cnn-rt", "position": i, "batch": 0, "label": ["positive", "negative"][i % 2], "status": "done",
             "input": {"text": PAYLOADS[i % len(PAYLOADS)]}, "result": {k: cnn[k] for k in keep}, "error": None}
            for i in range(30)]
    request = {"models": ["cnn-rt"], "methods": ["gradient", "grad_x_input", "lrp"], "top_k": 3}
    document = {"id": "a1", "status": "succeeded", "models": ["cnn-rt"], "methods": request["methods"],
                "counts": {"total": 30, "done": 30, "failed": 0}, "aggregates": aggregate(rows, request)}
    path = tmp_path / "report.html"
    path.write_text(report_html(document, rows), encoding="utf-8")
    browser.get(path.as_uri())
    assert browser.execute_script("return window.__xss") is None
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    shown = "[...document.querySelectorAll('table.items tbody tr')].filter(r => !r.hidden).length"
    assert browser.execute_script(f"return {shown}") == 25  # paginated
    browser.execute_script("document.querySelector('.pager button:last-child').click()")
    assert browser.execute_script(f"return {shown}") == 5
    browser.execute_script("document.querySelector('.pager button:first-child').click()")
    browser.execute_script("document.querySelector('table.items details summary').click()")
    value = browser.execute_script("const s = document.querySelector('table.items details .text span'); s.focus();"
                                   "return s.dataset.v")
    assert close(value, cnn["methods"]["gradient"]["word_scores"][0])
    accuracy = browser.execute_script("return document.querySelector('[data-accuracy]').textContent")
    assert close(accuracy, document["aggregates"]["models"]["cnn-rt"]["accuracy"])
    screenshot(browser, tmp_path, "report")
