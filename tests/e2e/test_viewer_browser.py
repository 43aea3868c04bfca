"""The web UI in a real browser (headless Chromium through selenium) against the embedded stack (`lantern up`: API +
worker): sign in, submit from the form, watch the job finish, read its page and compare its numbers with the API's
document, the audit page, keyboard-only use, the session and CSRF rules, the tenant boundary, and XSS payloads in
every user-controlled field. Every test saves a screenshot (tests/browser.py SHOTS)."""
from __future__ import annotations

import math
import re

import pytest

from tests.browser import chromium, console_errors, embedded_stack, require_browser, screenshot, sign_in
from tests.helpers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PAYLOADS = [
    "<script>window.__xss='script'</script>",
    '"><img src=x onerror="window.__xss=\'img\'">',
    "javascript:window.__xss='url'",
    "\u202eevil\u200b text\u200d <b>bold</b> \u2066'\u2069",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_browser()
    with embedded_stack(tmp_path_factory.mktemp("viewer")) as st:
        yield st


@pytest.fixture(scope="module")
def driver(stack):
    with chromium() as d:
        yield d


def _by():
    from selenium.webdriver.common.by import By

    return By


def _status(driver) -> int:
    """The HTTP status of the page the browser shows."""
    return driver.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus")


def _clean(driver) -> None:
    """Nothing injected ran or became markup, and the page's CSP was never violated."""
    assert driver.execute_script("return window.__xss") is None
    assert driver.find_elements(_by().CSS_SELECTOR, 'img[src="x"], [onerror], [onclick], [onload]') == []
    scripts = driver.execute_script(
        "return [...document.scripts].map(s => s.src ? new URL(s.src).pathname : 'inline:' + s.type)")
    assert set(scripts) <= {"/ui/static/ui.js", "/ui/static/viewer.js", "inline:application/json"}, scripts
    assert not [e for e in console_errors(driver) if "Content Security Policy" in e or "Uncaught" in e]


def _job_from_the_form(driver, stack, text: str, methods: list[str]) -> str:
    By = _by()
    from selenium.webdriver.support.ui import Select

    driver.get(f"{stack.url}/ui/jobs/new")
    Select(driver.find_element(By.ID, "model")).select_by_value("minilm-rt")
    driver.find_element(By.ID, "text").send_keys(text)
    for m in methods:
        driver.find_element(By.ID, f"method-{m}").click()
    driver.find_element(By.ID, "submit").click()
    landed = wait_for(lambda: re.search(r"/ui/jobs/[0-9a-f-]{36}$", driver.current_url) or
                      driver.find_elements(By.ID, "errors"), 30, "the job page")
    assert not isinstance(landed, list), landed[0].text
    return driver.current_url.rsplit("/", 1)[1]


def _wait_for_view(driver, timeout: float = 300) -> None:
    """The page reloads itself once the job has finished; then the job view is there."""
    wait_for(lambda: driver.find_elements(_by().CSS_SELECTOR, "[data-lantern-view], .error, #summary"),
             timeout, "the finished job's view", every=0.5)


def test_sign_in_submit_watch_and_read_the_job(stack, driver):
    By = _by()
    sign_in(driver, stack, stack.key)
    assert driver.current_url.endswith("/ui/jobs") and stack.key not in driver.page_source
    job_id = _job_from_the_form(driver, stack, "A gripping, beautifully acted and moving film.",
                                ["gradient", "grad_x_input", "integrated_gradients"])
    progress = driver.find_elements(By.ID, "job-progress")
    assert progress or driver.find_elements(By.CSS_SELECTOR, "[data-lantern-view]")  # it may already be done
    screenshot(driver, "job-progress")
    _wait_for_view(driver)
    screenshot(driver, "job-page")
    doc = stack.api().get(f"{stack.url}/v1/jobs/{job_id}", timeout=10).json()
    assert doc["status"] == "succeeded", doc
    result = doc["result"]
    shown = driver.find_element(By.CSS_SELECTOR, ".prediction .label").text
    assert shown == result["prediction"]["label"]
    # the words × methods table against the API's word scores (3 significant digits on the page)
    table = driver.find_element(By.CSS_SELECTOR, "table.words")
    heads = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    rows = [[cell.text for cell in tr.find_elements(By.CSS_SELECTOR, "th, td")] for tr in
            table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    word = heads.index("word")
    assert len(rows) == len(result["word_strings"]) and [r[word] for r in rows] == result["word_strings"]
    compared = 0
    for method in ("gradient", "grad_x_input", "integrated_gradients"):
        column = heads.index(method)
        for row, want in zip(rows, result["methods"][method]["word_scores"], strict=True):
            assert math.isclose(float(row[column]), want, rel_tol=5e-3, abs_tol=1e-12), (method, row, want)
            compared += 1
    assert compared == 3 * len(rows)
    _clean(driver)


def test_keyboard_only_through_the_job_page(stack, driver):
    from selenium.webdriver.common.keys import Keys

    By = _by()
    sign_in(driver, stack, stack.key)
    job_id = _job_from_the_form(driver, stack, "Dull and far too long.", ["gradient"])
    _wait_for_view(driver)
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    active = driver.switch_to.active_element
    assert active.get_attribute("class") == "skip" and active.is_displayed()  # the skip link shows when focused
    active.send_keys(Keys.ENTER)
    seen = []
    for _ in range(120):  # every control on the page in order, by Tab alone
        driver.switch_to.active_element.send_keys(Keys.TAB)
        el = driver.switch_to.active_element
        seen.append((el.tag_name, el.get_attribute("href") or "", el.text[:40]))
        if (el.get_attribute("href") or "").endswith("/artifacts/gradient.png"):
            break
    assert seen[-1][1].endswith(f"/ui/jobs/{job_id}/artifacts/gradient.png"), seen
    focused_words = [s for s in seen if s[0] == "span"]  # each shaded word takes focus to show its raw value
    assert focused_words, seen
    screenshot(driver, "keyboard-focus", full_page=False)
    driver.switch_to.active_element.send_keys(Keys.ENTER)  # opens the figure through the UI's artifact route
    wait_for(lambda: driver.current_url.endswith("/artifacts/gradient.png"), 20, "the figure")
    assert _status(driver) == 200


def test_the_tenant_boundary_and_the_session_rules(stack, driver):
    By = _by()
    sign_in(driver, stack, stack.key)
    job_id = stack.api().post(f"{stack.url}/v1/jobs", json={"model": "minilm-rt", "methods": ["gradient"],
                                                           "inputs": {"text": "Mine alone."}}, timeout=30).json()["id"]
    sign_in(driver, stack, stack.new_key("someone-else"))
    driver.get(f"{stack.url}/ui/jobs/{job_id}")
    assert _status(driver) == 404 and "404" in driver.find_element(By.TAG_NAME, "h1").text
    screenshot(driver, "other-tenant-404")
    # a forged cookie: the sign-in page
    driver.delete_all_cookies()
    driver.add_cookie({"name": "lantern_session", "value": "eyJrZXlfaWQiOiJ4In0.forged.signature", "path": "/ui"})
    driver.get(f"{stack.url}/ui/jobs")
    assert "/ui/login" in driver.current_url and driver.find_element(By.ID, "key").get_attribute("type") == "password"
    screenshot(driver, "sign-in")


def test_a_cross_site_form_post_is_refused(stack, driver):
    sign_in(driver, stack, stack.key)
    before = len(stack.api().get(f"{stack.url}/v1/jobs", timeout=10).json()["items"])
    attack = (f"<form method=post action='{stack.url}/ui/jobs/new'><input name=model value=minilm-rt>"
              "<input name=text value=pwned><input name=methods value=gradient><input name=csrf_token value=guess>"
              "<button id=go>win a prize</button></form>")
    driver.get("data:text/html," + attack)
    driver.find_element(_by().ID, "go").click()
    wait_for(lambda: driver.current_url.startswith(stack.url), 20, "the post")
    assert _status(driver) == 403
    screenshot(driver, "cross-site-403")
    assert len(stack.api().get(f"{stack.url}/v1/jobs", timeout=10).json()["items"]) == before


def test_xss_payloads_stay_text_everywhere(stack, driver):
    By = _by()
    tenant = PAYLOADS[1] + " " + PAYLOADS[0]
    key = stack.new_key(tenant)
    api = stack.api(key)
    jobs = [api.post(f"{stack.url}/v1/jobs", json={"model": "minilm-rt", "methods": ["gradient"],
                                                   "inputs": {"text": p}}, timeout=30).json()["id"]
            for p in PAYLOADS]
    audit = api.post(f"{stack.url}/v1/audits", json={
        "model": "minilm-rt", "methods": ["gradient"], "batch_size": 4,
        "corpus": {"items": [{"text": p, "label": PAYLOADS[(i + 1) % len(PAYLOADS)]}
                             for i, p in enumerate(PAYLOADS)]}}, timeout=30)
    assert audit.status_code == 202, audit.text
    audit_id = audit.json()["id"]
    sign_in(driver, stack, key)
    assert driver.find_element(By.CSS_SELECTOR, "[data-testid=tenant]").get_attribute("textContent") == tenant
    _clean(driver)
    for job_id, payload in zip(jobs, PAYLOADS, strict=True):
        stack.wait("jobs", job_id, key)
        driver.get(f"{stack.url}/ui/jobs/{job_id}")
        _wait_for_view(driver)
        shown = [dd.get_attribute("textContent") for dd in driver.find_elements(By.CSS_SELECTOR, "dl.inputs dd")]
        assert shown == [payload], (shown, payload)
        _clean(driver)
    screenshot(driver, "xss-job")
    driver.get(f"{stack.url}/ui/jobs")
    _clean(driver)
    stack.wait("audits", audit_id, key)
    driver.get(f"{stack.url}/ui/audits/{audit_id}")
    text = driver.find_element(By.TAG_NAME, "main").get_attribute("textContent")
    assert all(p in text for p in PAYLOADS[:3]), text[:2000]
    _clean(driver)
    screenshot(driver, "xss-audit")
    # a refused submission shows the payload back as text
    driver.get(f"{stack.url}/ui/jobs/new")
    driver.execute_script("const o = document.createElement('option'); o.value = arguments[0]; o.text = 'x';"
                          "const s = document.getElementById('model'); s.add(o); s.value = arguments[0];", PAYLOADS[1])
    driver.find_element(By.ID, "text").send_keys(PAYLOADS[0])
    driver.find_element(By.ID, "method-gradient").click()
    driver.find_element(By.ID, "submit").click()
    wait_for(lambda: driver.find_elements(By.ID, "errors"), 20, "the refusal")
    assert repr(PAYLOADS[1]) in driver.find_element(By.ID, "errors").get_attribute("textContent")  # as sent
    assert driver.find_element(By.ID, "text").get_attribute("value") == PAYLOADS[0]
    _clean(driver)
    screenshot(driver, "xss-form")


def test_the_audit_page_shows_progress_then_the_audit(stack, driver):
    By = _by()
    sign_in(driver, stack, stack.key)
    items = [{"text": t, "label": label} for t, label in (
        ("A gripping, beautifully acted film.", "positive"), ("Dull, slow and far too long.", "negative"),
        ("A warm and funny story.", "positive"), ("The plot makes no sense at all.", "negative"),
        ("Great performances all round.", "positive"), ("I wanted my two hours back.", "negative"))]
    resp = stack.api().post(f"{stack.url}/v1/audits", json={"model": "minilm-rt", "methods": ["gradient"],
                                                            "batch_size": 2, "corpus": {"items": items}}, timeout=30)
    assert resp.status_code == 202, resp.text
    audit_id = resp.json()["id"]
    driver.get(f"{stack.url}/ui/audits/{audit_id}")
    assert driver.find_element(By.ID, "audit-total").text == "6"
    screenshot(driver, "audit-progress")

    def shown(ident: str) -> str | None:  # read by script: the page reloads itself under our feet
        return driver.execute_script("const e = document.getElementById(arguments[0]); return e && e.textContent",
                                     ident)

    wait_for(lambda: shown("audit-status") in ("succeeded", "failed") and
             driver.find_elements(By.CSS_SELECTOR, "[data-lantern-view]"), 300, "the audit to end", every=0.5)
    assert shown("audit-status") == "succeeded"
    doc = stack.api().get(f"{stack.url}/v1/audits/{audit_id}", timeout=10).json()
    assert driver.find_element(By.ID, "audit-done").text == str(doc["counts"]["done"]) == "6"
    _clean(driver)
    screenshot(driver, "audit-page")
    driver.get(f"{stack.url}/ui/audits")
    assert audit_id[:8] in driver.find_element(By.ID, "audits").text


def test_sigma_and_esim_views(stack, driver):
    By = _by()
    sign_in(driver, stack, stack.key)
    api = stack.api()
    sigma = api.post(f"{stack.url}/v1/jobs", json={
        "model": "minilm-rt", "methods": ["sigma"], "inputs": {"text": "A gripping, beautifully acted film."},
        "params": {"sigma": {"samples": 1, "max_steps": 150}}}, timeout=30)
    esim = api.post(f"{stack.url}/v1/jobs", json={
        "model": "esim-50", "methods": ["attention", "attention_saliency", "gating"],
        "inputs": {"premise": "A man is playing a guitar on stage.", "hypothesis": "A person plays music."}},
        timeout=30)
    assert sigma.status_code == esim.status_code == 202, (sigma.text, esim.text)
    for job, section, shot in ((sigma.json(), "section.other.sigma", "sigma-view"),
                               (esim.json(), "section.other.attention_saliency", "esim-view")):
        doc = stack.wait("jobs", job["id"])
        assert doc["status"] == "succeeded", doc
        driver.get(f"{stack.url}/ui/jobs/{job['id']}")
        view = driver.find_element(By.CSS_SELECTOR, section)
        driver.execute_script("arguments[0].scrollIntoView()", view)
        assert view.is_displayed()
        _clean(driver)
        screenshot(driver, shot)
    gates = driver.find_elements(By.CSS_SELECTOR, "section.other.gating .gate")
    assert len(gates) == len(doc["result"]["methods"]["gating"]["gates"]), len(gates)


def test_the_jobs_list_updates_without_a_reload(stack, driver):
    By = _by()
    sign_in(driver, stack, stack.key)
    job_id = stack.api().post(f"{stack.url}/v1/jobs", json={"model": "minilm-rt", "methods": ["gradient"],
                                                           "inputs": {"text": "Watch me finish."}},
                              timeout=30).json()["id"]
    driver.get(f"{stack.url}/ui/jobs")
    row = f"#jobs tr[data-id='{job_id}'] .status"
    assert driver.find_element(By.CSS_SELECTOR, row).text in ("queued", "running")
    driver.execute_script("window.__same_page = true")  # gone if the page were loaded again

    def status() -> str | None:
        return driver.execute_script("const e = document.querySelector(arguments[0]); return e && e.textContent",
                                     row)

    wait_for(lambda: status() == "succeeded", 300, "the row to show the finished job", every=0.5)
    assert driver.execute_script("return window.__same_page") is True
    _clean(driver)
    screenshot(driver, "jobs-list")
