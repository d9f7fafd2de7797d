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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from mailout.config import load_settings
from mailout.db import make_engine, transaction
from mailout.models import (
    ConsentEvent,
    Delivery,
    DeliveryStatus,
    EventKind,
    MailingList,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)
from mailout.tokens import Purpose, Signer
from tests.conftest import SECRET_KEY
from tests.smtpserver import SMTPServer
from tests.test_web import (
    FRENCH_SUBJECT,
    LANGUAGE_MEMBERS,
    LANGUAGE_PUBLIC,
    MEMBERS,
    PUBLIC,
    dispatch_in_two_languages,
    import_list,
    languages_csv,
    received,
    run,
    unsubscribe_url,
    view_url,
)

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

    def __init__(self, workspace: Path, port: int, *options: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailout", "serve", "--port", str(port), *options],
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


def test_serve_runs_waitress_and_stalled_clients_hold_no_thread(
    served: Served, sending_workspace: Path
) -> None:
    second = Served(sending_workspace, free_port(), "--threads", "1", "--behind-proxy")
    stalled = []
    try:
        host, port = second.url.removeprefix("http://").split(":")
        for _ in range(3):  # half a request each, never finished: a slow-loris client
            connection = socket.create_connection((host, int(port)), timeout=5)
            connection.sendall(b"GET /issues/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            stalled.append(connection)
        started = time.monotonic()
        status, page, headers = http(second.url + "/issues/2019-01")
        assert status == 200 and "January 2019" in page
        assert time.monotonic() - started < 5  # one thread, and it was free
        assert headers["Server"] is None  # no "Werkzeug/…" (nor any server's name and version)
        # The server refuses a body bigger than any of the app's requests, before the app.
        status, _, _ = http(second.url + "/unsubscribe/x.y", data=b"x" * (65 * 1024))
        assert status == 413
        # Behind a proxy, loopback says nothing about who asks: no password set, no preview.
        assert http(second.url + "/preview/")[0] == 404
        assert http(served.url + "/preview/")[0] == 200
    finally:
        for connection in stalled:
            connection.close()
        assert "stopped" in second.stop()


def members_tokens(workspace: Path, count: int) -> dict[str, str]:
    """Add ``count`` members and return each one's one-click address, by email."""
    import_list(workspace, [(f"reader{n}@example.org", f"Reader {n}") for n in range(count)], "members")
    engine = make_engine(load_settings(workspace).database_url())
    signer = Signer.from_secret(SECRET_KEY)
    with transaction(engine) as session:
        rows = session.execute(
            select(Subscriber.email, Subscription.subscriber_id, Subscription.list_id)
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .join(MailingList, MailingList.id == Subscription.list_id)
            .where(MailingList.name == "members", Subscriber.email.like("reader%"))
        ).all()
    engine.dispose()
    return {email: signer.sign(Purpose.UNSUBSCRIBE, sid, lid) for email, sid, lid in rows}


def one_click(base: str, tokens: list[str]) -> list[int]:
    """POST one-click to each token from four threads at once; return the statuses."""
    with ThreadPoolExecutor(4) as pool:
        return list(
            pool.map(
                lambda token: http(
                    f"{base}/unsubscribe/{token}",
                    data=b"List-Unsubscribe=One-Click",
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )[0],
                tokens,
            )
        )


def unsubscribe_events(workspace: Path) -> dict[str, list[tuple[str, str]]]:
    engine = make_engine(load_settings(workspace).database_url())
    with transaction(engine) as session:
        rows = session.execute(
            select(Subscriber.email, ConsentEvent.kind, ConsentEvent.source)
            .join(Subscriber, Subscriber.id == ConsentEvent.subscriber_id)
            .where(ConsentEvent.kind == EventKind.UNSUBSCRIBED)
        ).all()
        left = set(
            session.scalars(
                select(Subscriber.email)
                .join(Subscription, Subscription.subscriber_id == Subscriber.id)
                .where(Subscription.status == SubscriptionStatus.UNSUBSCRIBED)
            )
        )
    engine.dispose()
    found: dict[str, list[tuple[str, str]]] = {email: [] for email in left}
    for email, kind, source in rows:
        found.setdefault(email, []).append((str(kind), str(source)))
    return found


def test_concurrent_one_click_posts_are_all_recorded_once(served: Served, sending_workspace: Path) -> None:
    tokens = members_tokens(sending_workspace, 24)
    # Every person twice, the second time concurrently with the first: one event each.
    statuses = one_click(served.url, [*tokens.values(), *tokens.values()])
    assert statuses == [200] * 48
    events = unsubscribe_events(sending_workspace)
    assert events == {email: [("unsubscribed", "one-click")] for email in tokens}


def test_one_click_posts_while_another_process_dispatches(
    served: Served, sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    tokens = members_tokens(sending_workspace, 40)
    leaving = sorted(tokens)[::2]
    before = len(smtp_server.messages)
    smtp_server.slow_answer(0.05)  # about a second of sending: the POSTs land in the middle
    env = {**os.environ, "MAILOUT_SENDING_BATCH_SIZE": "2"}
    sender = subprocess.Popen(
        [sys.executable, "-m", "mailout", "send", "2019-01", "--list", "members", "--yes", "--again"],
        cwd=sending_workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while len(smtp_server.messages) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sender.poll() is None, "the dispatch ended before the POSTs began"
        statuses = one_click(served.url, [tokens[email] for email in leaving])
    finally:
        output, _ = sender.communicate(timeout=120)
    assert sender.returncode == 0, output
    assert statuses == [200] * len(leaving)  # none waited past the busy timeout (a 503)
    assert unsubscribe_events(sending_workspace) == {
        email: [("unsubscribed", "one-click")] for email in leaving
    }
    engine = make_engine(load_settings(sending_workspace).database_url())
    with transaction(engine) as session:
        newest = session.scalar(select(func.max(Delivery.dispatch_id)))
        states = dict(
            session.execute(
                select(Delivery.email, Delivery.status).where(Delivery.dispatch_id == newest)
            ).all()
        )
    engine.dispose()
    # Each message went out or was skipped; only those who left were skipped, and a skipped
    # person got nothing.
    assert set(states.values()) <= {DeliveryStatus.SENT, DeliveryStatus.SKIPPED}
    skipped = {email for email, status in states.items() if status is DeliveryStatus.SKIPPED}
    assert skipped <= set(leaving)
    got = {r.rcpt_tos[0] for r in smtp_server.messages[before:]}
    assert got == set(states) - skipped
    assert set(tokens) - set(leaving) <= got
    assert skipped  # some were still waiting when they left: the two processes did overlap


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
    sections = page.locator("section.variant")
    languages = sections.evaluate_all("s => [...new Set(s.map(e => e.dataset.language))]")
    assert languages[0] == "en" and sections.count() == 2 * len(
        languages
    )  # members and public, each language
    assert sections.nth(0).locator("h2").inner_text() == "Members · English (en)"
    assert sections.nth(1).locator("h2").inner_text() == "Public · English (en)"
    frames = page.locator("iframe")
    assert frames.count() == 4 * len(languages)  # desktop and mobile of each
    for index in range(frames.count()):
        body = frames.nth(index).content_frame.locator("body")
        assert body.inner_text().strip(), index
    for index in range(4):
        assert "January 2019" in frames.nth(index).content_frame.locator("body").inner_text()
    for index in (0, 2):  # every picture loaded (from this site, under the page's policy)
        sizes = (
            frames.nth(index)
            .content_frame.locator("img")
            .evaluate_all("images => images.map(i => i.complete ? i.naturalWidth : -1)")
        )
        assert sizes and all(width > 0 for width in sizes), sizes
    widths = [frames.nth(i).bounding_box()["width"] for i in range(4)]  # type: ignore[index]
    assert widths[0] == widths[2] and widths[1] == widths[3] and widths[1] < widths[0]
    # The members-only teaser appears in the public frames only.
    public_text = frames.nth(2).content_frame.locator("body").inner_text()
    assert re.search(r"\d+ more items? in this issue for members", public_text)
    member_text = frames.nth(0).content_frame.locator("body").inner_text()
    assert not re.search(r"\d+ more items? in this issue for members", member_text)
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


@pytest.fixture
def served_bilingual(sending_workspace: Path, smtp_server: SMTPServer, port: int) -> Iterator[Served]:
    """The example issue in English and French sent to readers of both, behind a running `mailout serve`."""
    config = sending_workspace / "mailout.toml"
    config.write_text(
        config.read_text(encoding="utf-8").replace("https://news.example", f"http://127.0.0.1:{port}"),
        encoding="utf-8",
    )
    languages_csv(sending_workspace, LANGUAGE_MEMBERS, "members")
    languages_csv(sending_workspace, LANGUAGE_PUBLIC, "public")
    dispatch_in_two_languages(sending_workspace)
    server = Served(sending_workspace, port)
    yield server
    if server.process.poll() is None:
        server.stop()


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_french_archive_page_and_unsubscribe_page_in_chromium(
    served_bilingual: Served, smtp_server: SMTPServer, browser: Any, tmp_path: Path
) -> None:
    problems: list[str] = []
    page = browser.new_page(viewport={"width": 375, "height": 800}, locale="fr-FR")
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    # A French browser opens the index: the issue in French, once.
    page.goto(served_bilingual.url + "/issues/")
    assert page.locator("html").get_attribute("lang") == "fr"
    entries = page.locator("ol.issues > li")
    assert entries.count() == 1
    assert FRENCH_SUBJECT in entries.first.inner_text() and "Aussi en" in entries.first.inner_text()
    entries.first.get_by_role("link", name=FRENCH_SUBJECT).click()
    page.wait_for_load_state()
    assert page.url == served_bilingual.url + "/issues/2019-01/fr"
    assert page.locator("html").get_attribute("lang") == "fr"
    assert page.title() == FRENCH_SUBJECT
    body = page.locator("body").inner_text()
    assert "Titre français numéro" in body and "public ouvert à tous" in body
    assert "réservé aux membres" not in body  # the public French variant
    switcher = page.locator("nav.mo-languages")
    assert switcher.is_visible() and switcher.locator("[aria-current=page]").inner_text() == "français"
    box = switcher.get_by_role("link", name="English").bounding_box()
    assert box is not None and box["width"] > 0 and box["x"] + box["width"] <= 375
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= 375, f"horizontal scrolling at 375 px: {scroll} px wide"
    sizes = page.locator("img").evaluate_all("images => images.map(i => i.complete ? i.naturalWidth : -1)")
    assert sizes and all(width > 0 for width in sizes), sizes
    page.screenshot(path=str(tmp_path / "issue-fr.png"), full_page=True)
    # The switcher leads to the English page, which names the French one.
    switcher.get_by_role("link", name="English").click()
    page.wait_for_load_state()
    assert page.url.endswith("/issues/2019-01/en") and page.locator("html").get_attribute("lang") == "en"
    assert page.locator('link[rel=alternate][hreflang="fr"]').get_attribute("href") == (
        served_bilingual.url + "/issues/2019-01/fr"
    )
    # A French reader's unsubscribe link: the page and its result in French.
    url = unsubscribe_url(received(smtp_server)[("members", "ana@example.org")])
    page.goto(url)
    assert page.locator("html").get_attribute("lang") == "fr"
    assert page.locator("h1").inner_text() == "Se désinscrire"
    page.get_by_role("button", name="Se désinscrire", exact=True).click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "Votre désinscription est enregistrée"
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(tmp_path / "unsubscribed-fr.png"))
    page.close()
    assert problems == []
    for name in ("issue-fr.png", "unsubscribed-fr.png"):
        assert (tmp_path / name).stat().st_size > 5_000
