"""`mailout serve` as a real process: over HTTP, in Chromium, and end to end with a dispatch."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.smtpserver import SMTPServer
from tests.test_web import MEMBERS, PUBLIC, import_list, received, run, unsubscribe_url, view_url

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode(), error.headers


class Served:
    """A `mailout serve` process on loopback, stopped with SIGTERM."""

    def __init__(self, workspace: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailout", "serve", "--port", str(port)],
            cwd=workspace,
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mailout serve exited: {self.process.stdout.read()}")  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        self.process.kill()
        raise RuntimeError("mailout serve did not start listening")

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=10)
        assert self.process.returncode == 0, output
        return output


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def served(sending_workspace: Path, smtp_server: SMTPServer, port: int) -> Iterator[Served]:
    """The example issue sent to both lists, with messages linking to a running `mailout serve`."""
    config = sending_workspace / "mailout.toml"
    config.write_text(
        config.read_text(encoding="utf-8").replace("https://news.example", f"http://127.0.0.1:{port}"),
        encoding="utf-8",
    )
    import_list(sending_workspace, MEMBERS, "members")
    import_list(sending_workspace, PUBLIC, "public")
    for list_name in ("members", "public"):
        code, out = run("send", "2019-01", "--list", list_name, "--yes")
        assert code == 0, out
    server = Served(sending_workspace, port)
    yield server
    if server.process.poll() is None:
        server.stop()


def test_one_click_from_a_received_message_then_the_next_dispatch_skips_that_address(
    served: Served, smtp_server: SMTPServer
) -> None:
    messages = received(smtp_server)
    url = unsubscribe_url(messages[("members", "ana@example.org")])
    assert url.startswith(served.url + "/unsubscribe/")  # the link in the message, as sent

    status, page, _ = http(url)  # what a mail scanner does: nothing changes
    assert status == 200 and "Unsubscribe" in page
    # What Gmail or Yahoo do on "Unsubscribe" (RFC 8058): a POST with this exact body.
    status, page, headers = http(
        url,
        data=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200 and "unsubscribed" in page
    assert "Location" not in headers

    status, page, headers = http(view_url(messages[("members", "bo@example.org")]))
    assert status == 200 and "Bo" in page and "default-src 'none'" in headers["Content-Security-Policy"]
    status, page, _ = http(served.url + "/issues/")
    assert status == 200 and "January 2019" in page

    before = len(smtp_server.messages)
    code, out = run("send", "2019-01", "--list", "members", "--yes", "--again")
    assert code == 0, out
    assert [r.rcpt_tos[0] for r in smtp_server.messages[before:]] == ["bo@example.org"]
    assert "stopped" in served.stop()


def test_serve_refuses_a_port_in_use(served: Served, port: int) -> None:
    code, out = run("serve", "--port", str(port))
    assert code == 1 and f"cannot listen on 127.0.0.1:{port}" in out


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_preview_and_archive_pages_render_in_chromium(
    served: Served, browser: Any, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    page.goto(served.url + "/preview/2019-01")
    assert page.title() == "Preview: 2019-01"
    assert page.locator("th#member").inner_text() == "Members"
    assert page.locator("th#public").inner_text() == "Public"
    frames = page.locator("iframe")
    assert frames.count() == 4
    for index in range(4):
        body = frames.nth(index).content_frame.locator("body")
        assert "January 2019" in body.inner_text()
    for index in (0, 1):  # every picture loaded (from this site, under the page's policy)
        sizes = (
            frames.nth(index)
            .content_frame.locator("img")
            .evaluate_all("images => images.map(i => i.complete ? i.naturalWidth : -1)")
        )
        assert sizes and all(width > 0 for width in sizes), sizes
    widths = [frames.nth(i).bounding_box()["width"] for i in range(4)]  # type: ignore[index]
    assert widths[:2] == [widths[0]] * 2 and widths[2:] == [widths[2]] * 2 and widths[2] < widths[0]
    # The members-only teaser appears in the public frames only.
    public_text = frames.nth(1).content_frame.locator("body").inner_text()
    assert re.search(r"\d+ more items? in this issue for members", public_text)
    page.screenshot(path=str(tmp_path / "preview.png"), full_page=False)

    page.goto(served.url + "/issues/")
    assert "past issues" in page.title()
    page.get_by_role("link", name=re.compile("January 2019")).click()
    page.wait_for_load_state()
    assert "January 2019" in page.title()
    page.screenshot(path=str(tmp_path / "issue.png"))
    page.goto(served.url + "/issues/")
    page.screenshot(path=str(tmp_path / "archive.png"))
    page.close()

    assert problems == []
    for name in ("preview.png", "issue.png", "archive.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
        assert (tmp_path / name).stat().st_size > 5_000
