"""Headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium.

``browser`` is a module-scoped WebDriver. Selenium Manager never runs (it would try to
download a browser): the driver path is given explicitly. A missing browser FAILS the
test, since CI installs it (``scripts/install test``); set ``LINGUAGATE_SKIP_BROWSER=1``
to skip browser tests on a machine without it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

__all__ = ["CHROMEDRIVER", "browser"]

CHROMEDRIVER = Path("/usr/bin/chromedriver")
_CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def _binary() -> str | None:
    found = next((p for p in _CHROMIUM if Path(p).exists()), None)
    return found or shutil.which("chromium")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chrome]:
    binary = _binary()
    missing = [
        what
        for what, ok in (("chromium", binary is not None), ("chromedriver", CHROMEDRIVER.exists()))
        if not ok
    ]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        message = f"browser tests need {', '.join(missing)}: run `scripts/install test`"
        if os.environ.get("LINGUAGATE_SKIP_BROWSER") == "1":
            pytest.skip(message)
        pytest.fail(message + " (or set LINGUAGATE_SKIP_BROWSER=1 to skip)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # containers run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--window-size=1280,1500",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
