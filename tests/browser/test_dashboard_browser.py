"""End to end in headless Chromium: compressed requests through the proxy, then the
dashboard as a tenant (own savings only) and as an admin (every tenant).

The page needs no JavaScript: the browser submits the sign-in form, follows links and
reads server-rendered HTML and SVG. A screenshot of the admin's view of a tenant is saved
to ``$LINGUAGATE_DASHBOARD_SCREENSHOT`` when set (``bench/dashboard.png`` in the repo was
made that way), else into the test's temporary folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from proxy.dashboard import fmt
from tests.support.compression import CompressionStack, few_shot, key_of
from tests.support.upstream import FakeUpstream

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def _send(stack: CompressionStack, tenant: str, seeds: list[int]) -> None:
    with stack.client(tenant) as sdk:
        for seed in seeds:
            raw = sdk.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=few_shot(seed),  # type: ignore[arg-type]
            )
            assert raw.headers["x-linguagate-compression"] == "applied"


def _recorded(stack: CompressionStack, tenant: str, requests: int) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while True:
        body: dict[str, Any] = httpx.get(
            stack.server.url + "/dashboard/api/summary",
            headers={"authorization": f"Bearer {key_of(tenant)}"},
        ).json()
        if body["requests"] >= requests or time.monotonic() > deadline:
            assert body["requests"] == requests
            return body
        time.sleep(0.05)


def _sign_in(browser: Chrome, url: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(url + "/dashboard")
    field = browser.find_element(By.ID, "key")
    assert field.get_attribute("type") == "password"
    field.send_keys(key)
    submit = browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]")
    _click_and_wait(browser, submit, "header .who")


def _wait(browser: Chrome, css: str) -> Any:
    """The element once the page showing it has loaded (a click returns before that)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, 10).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def _gone(element: Any) -> bool:
    """Whether ``element``'s page has been replaced. Chromium reports a node of the old
    document either as stale or as "does not belong to the document" (a plain
    WebDriverException), depending on how far the navigation got."""
    from selenium.common.exceptions import WebDriverException

    try:
        element.is_enabled()
    except WebDriverException:
        return True
    return False


def _click_and_wait(browser: Chrome, element: Any, css: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    element.click()
    WebDriverWait(browser, 10).until(lambda _: _gone(element))
    return _wait(browser, css)


def _text(browser: Chrome, element_id: str) -> str:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # Read in one go, retried if the node is replaced between finding and reading it.
    wait = WebDriverWait(browser, 10, ignored_exceptions=(WebDriverException,))
    return str(wait.until(lambda b: b.find_element(By.ID, element_id).text))


def test_tenant_and_admin_views_in_chromium(
    compression_stack: CompressionStack,
    upstream: FakeUpstream,
    browser: Chrome,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    stack = compression_stack
    url = stack.server.url
    _send(stack, "team-a", [80, 81, 80, 82])
    _send(stack, "team-b", [83, 84])
    team_a = _recorded(stack, "team-a", 4)
    team_b = _recorded(stack, "team-b", 2)
    assert team_a["saved_tokens"] > 0 and team_b["saved_tokens"] > 0

    # Tenant A: its own savings, nothing of tenant B.
    _sign_in(browser, url, key_of("team-a"))
    assert _text(browser, "tenant-name") == "team-a"
    assert _text(browser, "saved-tokens") == fmt.tokens(team_a["saved_tokens"])
    assert _text(browser, "requests") == "4"
    assert browser.find_element(By.CSS_SELECTOR, "svg.chart[role=img]")
    assert "team-b" not in browser.page_source
    assert "httponly" not in (browser.execute_script("return document.cookie") or "").lower()
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script sees it
    # Editing the address does not help.
    browser.get(url + "/dashboard?tenant=team-b&period=7d")
    assert "only see its own tenant" in browser.page_source
    assert fmt.tokens(team_b["saved_tokens"]) not in browser.find_element(By.TAG_NAME, "main").text
    browser.get(url + "/dashboard/api/tenants")
    assert "permission" in browser.page_source.lower()

    # Sign out, then the admin sees both tenants and can drill into each.
    browser.get(url + "/dashboard")
    sign_out = browser.find_element(By.CSS_SELECTOR, "header form button")
    assert _click_and_wait(browser, sign_out, "#key")
    _sign_in(browser, url, key_of("ops"))
    table = _wait(browser, "#tenants")
    rows = {
        r.find_element(By.TAG_NAME, "th").text: r
        for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    }
    assert {"team-a", "team-b"} <= set(rows)
    assert fmt.tokens(team_b["saved_tokens"]) in rows["team-b"].text
    # Server-side sort, no script.
    _click_and_wait(browser, table.find_element(By.LINK_TEXT, "Requests"), "#tenants")
    assert "sort=requests" in browser.current_url
    _click_and_wait(browser, browser.find_element(By.LINK_TEXT, "team-b"), "#tenant-name")
    assert _text(browser, "tenant-name") == "team-b"
    assert _text(browser, "saved-tokens") == fmt.tokens(team_b["saved_tokens"])

    browser.get(url + "/dashboard?tenant=team-a&period=24h")
    assert _text(browser, "saved-tokens") == fmt.tokens(team_a["saved_tokens"])
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 40, 4000))
    target = Path(os.environ.get("LINGUAGATE_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
    assert browser.save_screenshot(str(target))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
