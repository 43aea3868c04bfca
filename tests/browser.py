"""Headless Chromium for the viewer's browser tests (Debian's chromium + chromium-driver; `.ci/run` installs them),
and the embedded stack (`lantern up`: API + one worker, SQLite) those tests sign in to."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.helpers import LANTERN, api_ready, free_port, wait_for

CHROMEDRIVER = os.environ.get("LANTERN_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM = os.environ.get("LANTERN_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("LANTERN_SCREENSHOTS") or Path(tempfile.gettempdir()) / "lantern-screenshots")


def require_browser() -> None:
    """Skip (locally) or fail (CI=true) when Chromium or its driver is missing."""
    missing = [p for p in (CHROMEDRIVER, CHROMIUM) if not shutil.which(p)]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true: the browser tests must run")
    pytest.skip(message)


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 1000) -> Iterator:
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, name: str, full_page: bool = True) -> Path:
    """Save what the browser shows (the whole page's height) under SHOTS; returns the file."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    size = driver.get_window_size()
    if full_page:
        driver.execute_script("window.scrollTo(0, 0)")
        height = driver.execute_script("return Math.min(document.documentElement.scrollHeight, 6000)")
        driver.set_window_size(size["width"], max(height, 300))
    driver.save_screenshot(str(path))
    driver.set_window_size(size["width"], size["height"])
    return path


def console_errors(driver) -> list[str]:
    """The page's console errors (a CSP violation or a script error shows up here)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@dataclass
class EmbeddedStack:
    url: str
    key: str
    data_dir: Path
    proc: subprocess.Popen
    log: Path

    def new_key(self, tenant: str) -> str:
        out = subprocess.run(LANTERN + ["keys", "create", "--tenant", tenant, "--data-dir", str(self.data_dir)],
                             env=_env(), check=True, capture_output=True, text=True).stdout
        return out.strip().splitlines()[-1]

    def api(self, key: str | None = None) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key or self.key}"
        return session

    def wait(self, kind: str, ident: str, key: str | None = None, timeout: float = 300) -> dict:
        """Poll a job or an audit until it has finished; its document."""
        api = self.api(key)

        def finished():
            doc = api.get(f"{self.url}/v1/{kind}/{ident}", timeout=10).json()
            return doc if doc["status"] in ("succeeded", "failed", "cancelled") else None

        return wait_for(finished, timeout, f"{kind} {ident} to finish (log: {self.log})", every=0.5)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANTERN_")}
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "LANTERN_TORCH_THREADS": "1"}


@contextlib.contextmanager
def embedded_stack(tmp: Path) -> Iterator[EmbeddedStack]:
    """`lantern up` on a free port with its own data dir; the development key it prints."""
    port, data, log = free_port(), tmp / "data", tmp / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(LANTERN + ["up", "--port", str(port), "--data-dir", str(data)], env=_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: api_ready(url) or proc.poll() is not None, 120, "lantern up")
        assert proc.poll() is None, log.read_text()[-3000:]
        key = wait_for(lambda: re.search(r"^(lt_\S+)$", log.read_text(), re.M), 30, "the development key").group(1)
        yield EmbeddedStack(url, key, data, proc, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # `lantern up` stops its worker on SIGINT
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def sign_in(driver, stack: EmbeddedStack, key: str) -> None:
    """Through the sign-in form, as a person would."""
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{stack.url}/ui/login")
    field = driver.find_element(By.ID, "key")
    field.send_keys(key)
    field.submit()
    wait_for(lambda: "/ui/login" not in driver.current_url, 30, "the sign-in to land")
