"""The web app through Flask's test client, on SQLite and PostgreSQL, after real dispatches.

Every link comes from a message the test SMTP server received: the tests follow
what readers would click, not URLs they build themselves.
"""

from __future__ import annotations

import html as htmlmod
import mailbox
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from mailout import archive, i18n, tokens, web
from mailout import db as web_db
from mailout.cli import cli
from mailout.config import Settings, load_settings
from mailout.db import make_engine, transaction
from mailout.errors import ConfigError
from mailout.issues import Issue, Item, load_issue
from mailout.models import (
    ConsentEvent,
    Delivery,
    DeliveryStatus,
    Dispatch,
    MailingList,
    Subscriber,
    SubscriberStatus,
    Subscription,
)
from mailout.outbox import create_dispatch
from mailout.render import private_images, render_variant
from mailout.segments import Segment
from mailout.web import NEWEST_SECONDS, PageCache, create_app
from tests.conftest import SECRET_KEY
from tests.smtpserver import SMTPServer
from tests.test_render import members_only_items, secret_strings

pytestmark = pytest.mark.slow

MEMBERS = [("ana@example.org", "Ana Conceição"), ("bo@example.org", "Bo Berg")]
PUBLIC = [("cy@example.org", "Cy Dupont"), ("ana@example.org", "Ana Conceição")]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def import_list(workspace: Path, rows: list[tuple[str, str]], list_name: str) -> None:
    path = workspace / f"{list_name}.csv"
    path.write_text("email,name\n" + "".join(f"{e},{n}\n" for e, n in rows), encoding="utf-8")
    code, out = run("subscribers", "import", str(path), "--list", list_name)
    assert code == 0, out


def received(smtp_server: SMTPServer) -> dict[tuple[str, str], EmailMessage]:
    """Return the messages received, by (list, recipient)."""
    found = {}
    for r in smtp_server.messages:
        message = r.message()
        list_name = "members" if "<members." in str(message["List-Id"]) else "public"
        found[(list_name, r.rcpt_tos[0])] = message
    return found


def unsubscribe_url(message: EmailMessage) -> str:
    header = " ".join(str(message["List-Unsubscribe"]).split())
    return re.search(r"<(https?://[^>]+)>", header).group(1)  # type: ignore[union-attr]


def view_url(message: EmailMessage) -> str:
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    # "View in your browser: <url>", in the message's language: the one address of an issue page
    # (a test message's is the team's preview).
    return re.search(r"\s(https?://\S+/(?:issues|preview)/\S+)", text).group(1)  # type: ignore[union-attr]


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def leaked(page: str, secrets: set[str]) -> set[str]:
    visible = " ".join(htmlmod.unescape(re.sub(r"<[^>]+>", " ", page)).split())
    return {s for s in secrets if s in page or s in htmlmod.unescape(page) or s in visible}


@pytest.fixture
def sent(sending_workspace: Path, smtp_server: SMTPServer) -> Path:
    """The example issue dispatched to a members list and a public list."""
    import_list(sending_workspace, MEMBERS, "members")
    import_list(sending_workspace, PUBLIC, "public")
    for list_name in ("members", "public"):
        code, out = run("send", "2019-01", "--list", list_name, "--yes")
        assert code == 0, out
    return sending_workspace


@pytest.fixture
def app(sent: Path) -> Iterator[Flask]:
    app = create_app(load_settings(sent), local=True)
    yield app
    app.extensions["mailout"].engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def subscription_status(workspace: Path, address: str, list_name: str) -> str | None:
    """Return the address's status on the list ("subscribed", "unsubscribed"), None if never on it."""
    engine = make_engine(load_settings(workspace).database_url())
    with transaction(engine) as session:
        status = session.scalar(
            select(Subscription.status)
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .join(MailingList, MailingList.id == Subscription.list_id)
            .where(Subscriber.email == address, MailingList.name == list_name)
        )
    engine.dispose()
    return None if status is None else str(status)


def events(workspace: Path, address: str) -> list[tuple[str, str]]:
    engine = make_engine(load_settings(workspace).database_url())
    with transaction(engine) as session:
        rows = session.execute(
            select(ConsentEvent.kind, ConsentEvent.source)
            .join(Subscriber, Subscriber.id == ConsentEvent.subscriber_id)
            .where(Subscriber.email == address)
            .order_by(ConsentEvent.id)
        ).all()
    engine.dispose()
    return [(str(k), str(s)) for k, s in rows]


# --- unsubscribe -----------------------------------------------------------------


def test_get_shows_a_confirmation_and_never_unsubscribes(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer
) -> None:
    url = unsubscribe_url(received(smtp_server)[("members", "ana@example.org")])
    assert url.startswith("https://news.example/unsubscribe/")
    for _ in range(3):  # a mail scanner fetching the link, again and again
        response = client.get(path_of(url))
        assert response.status_code == 200
        page = response.get_data(as_text=True)
        assert 'method="post"' in page and "Members" in page
        assert "ana@example.org" not in page  # masked
        assert "a•••" in page
    assert subscription_status(sent, "ana@example.org", "members") == "subscribed"
    assert response.headers["X-Robots-Tag"] == "noindex"


def test_one_click_post_unsubscribes_once_and_is_harmless_to_repeat(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer
) -> None:
    url = unsubscribe_url(received(smtp_server)[("members", "ana@example.org")])
    # What a mail client sends (RFC 8058): a form body, no cookies, no confirmation.
    for _ in range(2):
        response = client.post(
            path_of(url),
            data="List-Unsubscribe=One-Click",
            content_type="application/x-www-form-urlencoded",
        )
        assert response.status_code == 200
        assert "Location" not in response.headers
        assert "Set-Cookie" not in response.headers
    assert subscription_status(sent, "ana@example.org", "members") == "unsubscribed"
    # Only that list: Ana still gets the public list.
    assert subscription_status(sent, "ana@example.org", "public") == "subscribed"
    assert events(sent, "ana@example.org").count(("unsubscribed", "one-click")) == 1


def test_one_click_as_multipart_form_data(sent: Path, client: FlaskClient, smtp_server: SMTPServer) -> None:
    url = unsubscribe_url(received(smtp_server)[("members", "bo@example.org")])
    response = client.post(
        path_of(url), data={"List-Unsubscribe": "One-Click"}, content_type="multipart/form-data"
    )
    assert response.status_code == 200
    assert ("unsubscribed", "one-click") in events(sent, "bo@example.org")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("List-Unsubscribe=One-Click", "text/plain"),
        ("List-Unsubscribe=One-Click\r\n", "text/plain; charset=utf-8"),
        ("List-Unsubscribe=One-Click", None),
        ("List-Unsubscribe=One-Click", "application/octet-stream"),
    ],
)
def test_one_click_whatever_the_content_type_says(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer, body: str, content_type: str | None
) -> None:
    url = unsubscribe_url(received(smtp_server)[("members", "bo@example.org")])
    response = client.post(path_of(url), data=body, content_type=content_type)
    assert response.status_code == 200
    assert subscription_status(sent, "bo@example.org", "members") == "unsubscribed"
    assert events(sent, "bo@example.org")[-1] == ("unsubscribed", "one-click")


def test_a_post_without_the_one_click_body_is_the_pages_button(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer
) -> None:
    url = unsubscribe_url(received(smtp_server)[("members", "bo@example.org")])
    response = client.post(path_of(url), data="List-Unsubscribe=Maybe", content_type="text/plain")
    assert response.status_code == 200
    assert events(sent, "bo@example.org")[-1] == ("unsubscribed", "link")


def test_the_pages_buttons_unsubscribe_from_the_list_or_from_every_list(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer
) -> None:
    messages = received(smtp_server)
    response = client.post(
        path_of(unsubscribe_url(messages[("members", "bo@example.org")])), data={"scope": "list"}
    )
    assert response.status_code == 200
    assert subscription_status(sent, "bo@example.org", "members") == "unsubscribed"
    assert ("unsubscribed", "link") in events(sent, "bo@example.org")

    response = client.post(
        path_of(unsubscribe_url(messages[("public", "ana@example.org")])), data={"scope": "all"}
    )
    assert response.status_code == 200
    assert "any list" in response.get_data(as_text=True)
    assert subscription_status(sent, "ana@example.org", "members") == "unsubscribed"
    assert subscription_status(sent, "ana@example.org", "public") == "unsubscribed"
    engine = make_engine(load_settings(sent).database_url())
    with transaction(engine) as session:
        ana = session.scalars(select(Subscriber).where(Subscriber.email == "ana@example.org")).one()
        assert ana.status is SubscriberStatus.UNSUBSCRIBED
    engine.dispose()


def test_bad_tokens_all_get_the_answer_of_an_unknown_one(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer
) -> None:
    url = unsubscribe_url(received(smtp_server)[("members", "ana@example.org")])
    token = urlsplit(url).path.rsplit("/", 1)[1]  # without its ?lang=
    body, mac = token.split(".")
    signer = tokens.Signer.from_secret(SECRET_KEY)
    other = tokens.Signer.from_secret("another-key-of-another-site-000")
    bad = {
        "forged mac": f"{body}.{'A' * len(mac)}",
        "truncated": token[:-3],
        "no mac": body,
        "a view token": signer.sign(tokens.Purpose.VIEW, 1, 1),
        "another key": other.sign(tokens.Purpose.UNSUBSCRIBE, 1, 1),
        "unknown subscriber": signer.sign(tokens.Purpose.UNSUBSCRIBE, 999_999, 1),
        "unknown list": signer.sign(tokens.Purpose.UNSUBSCRIBE, 1, 999_999),
        "garbage": "%00%0d%0a<script>",
    }
    answers = set()
    for token_value in bad.values():
        for method in (client.get, client.post):
            response = method(f"/unsubscribe/{token_value}", data={"List-Unsubscribe": "One-Click"})
            answers.add((response.status_code, response.get_data()))
    assert len(answers) == 1, answers
    status, page = answers.pop()
    assert status == 404 and b"not valid" in page
    assert subscription_status(sent, "ana@example.org", "members") == "subscribed"


def test_the_page_is_the_same_whether_or_not_still_subscribed(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer
) -> None:
    url = path_of(unsubscribe_url(received(smtp_server)[("members", "ana@example.org")]))
    before = client.get(url).get_data()
    client.post(url, data={"List-Unsubscribe": "One-Click"})
    assert client.get(url).get_data() == before


def test_the_links_of_test_messages_and_previews_unsubscribe_nobody(client: FlaskClient) -> None:
    for token in ("test", "preview"):
        response = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
        assert response.status_code == 200
        assert "test message" in response.get_data(as_text=True)


def test_an_unsubscribe_during_a_dispatch_skips_what_is_still_queued(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer
) -> None:
    settings = load_settings(sent)
    engine = make_engine(settings.database_url())
    with transaction(engine) as session:  # a dispatch written, not yet sent: everyone queued
        lst = session.scalars(select(MailingList).where(MailingList.name == "members")).one()
        variant = render_variant(
            load_issue(sent / "issues" / "2019-01" / "issue.yaml"), settings, Segment.MEMBER
        )
        dispatch = create_dispatch(
            session, "2019-01", lst, variant, from_name="N", from_address="n@efus.example", reply_to="",
            generation=2,  # the issue's second dispatch to the list, as `send --again` writes it
        )  # fmt: skip
        dispatch_id = dispatch.id
    url = unsubscribe_url(received(smtp_server)[("members", "bo@example.org")])
    assert client.post(path_of(url), data={"List-Unsubscribe": "One-Click"}).status_code == 200
    with transaction(engine) as session:
        states = dict(
            session.execute(
                select(Delivery.email, Delivery.status).where(Delivery.dispatch_id == dispatch_id)
            ).all()
        )
    engine.dispose()
    assert states == {"ana@example.org": DeliveryStatus.QUEUED, "bo@example.org": DeliveryStatus.SKIPPED}
    before = len(smtp_server.messages)
    code, out = run("send", "2019-01", "--list", "members", "--yes")  # resumes that dispatch
    assert code == 0, out
    assert [r.rcpt_tos[0] for r in smtp_server.messages[before:]] == ["ana@example.org"]


# --- view in browser and the archive ------------------------------------------------


def test_the_public_page_shows_no_members_only_text(sent: Path, client: FlaskClient) -> None:
    response = client.get("/issues/2019-01")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "<title>" in page and "January 2019" in page
    secrets = secret_strings(load_issue(sent / "issues" / "2019-01" / "issue.yaml"))
    assert secrets and not leaked(page, secrets)
    assert "?t=" not in page and "/unsubscribe/" not in page  # nobody's token on a public page
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert "https:" not in policy and "http:" not in policy  # nothing from another site


def public_dispatches(workspace: Path) -> list[tuple[int, str]]:
    engine = make_engine(load_settings(workspace).database_url())
    with transaction(engine) as session:
        rows = session.execute(
            select(Dispatch.id, Dispatch.key).where(Dispatch.segment == Segment.PUBLIC).order_by(Dispatch.id)
        ).all()
    engine.dispose()
    return [(int(i), str(k)) for i, k in rows]


def test_the_public_page_is_made_once_per_dispatch_and_revalidated_by_its_etag(
    sent: Path, app: Flask, client: FlaskClient
) -> None:
    pages = app.extensions["mailout"].pages
    first = client.get("/issues/2019-01")
    assert first.status_code == 200 and "January 2019" in first.get_data(as_text=True)
    [(dispatch_id, key)] = public_dispatches(sent)
    assert pages.held() == [(dispatch_id, key, "", "")]
    second = client.get("/issues/2019-01?utm_source=x")  # other parameters: the same page
    assert second.get_data() == first.get_data() and second.headers["ETag"] == first.headers["ETag"]
    assert pages.held() == [(dispatch_id, key, "", "")]
    assert second.headers["Cache-Control"] == "public, max-age=300"
    assert "default-src 'none'" in second.headers["Content-Security-Policy"]

    again = client.get("/issues/2019-01", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.get_data() == b""
    assert again.headers["ETag"] == first.headers["ETag"]
    other = client.get("/issues/2019-01", headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200 and other.get_data() == first.get_data()
    # Mounted under another path, the pictures' links differ: another entry.
    mounted = client.get("/issues/2019-01", environ_overrides={"SCRIPT_NAME": "/news"})
    assert b'src="/news/issues/2019-01/images/' in mounted.get_data()
    assert b'src="/issues/2019-01/images/' in first.get_data()
    assert set(pages.held()) == {(dispatch_id, key, "", ""), (dispatch_id, key, "/news", "")}


def test_a_members_page_never_comes_from_nor_goes_into_the_public_cache(
    sent: Path, app: Flask, client: FlaskClient, smtp_server: SMTPServer
) -> None:
    pages = app.extensions["mailout"].pages
    issue = load_issue(sent / "issues" / "2019-01" / "issue.yaml")
    secrets = secret_strings(issue)
    titles = {i.title for i in members_only_items(issue)}
    member_url = path_of(view_url(received(smtp_server)[("members", "ana@example.org")]))
    member = client.get(member_url)
    assert member.status_code == 200 and leaked(member.get_data(as_text=True), titles) == titles
    assert pages.held() == []  # a member's page is never kept
    public = client.get("/issues/2019-01").get_data(as_text=True)
    assert not leaked(public, secrets)
    # Then the member's page again: theirs, not the public one just kept.
    member = client.get(member_url)
    assert leaked(member.get_data(as_text=True), titles) == titles and "Ana" in member.get_data(as_text=True)
    assert member.headers["Cache-Control"] == "private, no-store" and "ETag" not in member.headers
    # A bad token is never answered from the public cache either.
    refused = client.get("/issues/2019-01?t=x.y")
    assert refused.status_code == 403 and not leaked(refused.get_data(as_text=True), secrets)
    assert [key[0] for key in pages.held()] == [d for d, _ in public_dispatches(sent)]


def test_each_dispatch_has_its_own_page_whatever_became_of_the_one_before(
    sent: Path, app: Flask, client: FlaskClient
) -> None:
    pages = app.extensions["mailout"].pages
    assert "January 2019" in client.get("/issues/2019-01").get_data(as_text=True)
    issue_file = sent / "issues" / "2019-01" / "issue.yaml"
    issue_file.write_text(
        issue_file.read_text(encoding="utf-8").replace(
            'subject: "Efus Newsletter – January 2019"', 'subject: "Efus Newsletter – January 2019, again"'
        ),
        encoding="utf-8",
    )
    code, out = run("send", "2019-01", "--list", "public", "--yes", "--again")
    assert code == 0, out
    time.sleep(NEWEST_SECONDS)  # which dispatch is the newest: looked up again by now
    first, second = public_dispatches(sent)
    assert "January 2019, again" in client.get("/issues/2019-01").get_data(as_text=True)
    assert {k[:2] for k in pages.held()} == {first, second}

    # The newest dispatch removed (a backup restored, say): the page is the one before's again.
    engine = make_engine(load_settings(sent).database_url())
    with engine.begin() as conn:
        conn.execute(delete(Delivery).where(Delivery.dispatch_id == second[0]))
        conn.execute(delete(Dispatch).where(Dispatch.id == second[0]))
    time.sleep(NEWEST_SECONDS)
    page = client.get("/issues/2019-01").get_data(as_text=True)
    assert "January 2019" in page and "January 2019, again" not in page
    # Another dispatch again; on SQLite it may even get the removed one's number: its own page.
    issue_file.write_text(
        issue_file.read_text(encoding="utf-8").replace("January 2019, again", "January 2019, third"),
        encoding="utf-8",
    )
    code, out = run("send", "2019-01", "--list", "public", "--yes", "--again")
    assert code == 0, out
    time.sleep(NEWEST_SECONDS)
    third = public_dispatches(sent)[-1]
    assert third[1] != second[1]
    assert "January 2019, third" in client.get("/issues/2019-01").get_data(as_text=True)
    # Nothing left of the archive: no page, whatever the cache holds.
    with engine.begin() as conn:
        conn.execute(delete(Delivery))
        conn.execute(delete(Dispatch))
    engine.dispose()
    time.sleep(NEWEST_SECONDS)
    assert client.get("/issues/2019-01").status_code == 404


def test_a_member_sees_the_members_version_through_their_own_link(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer
) -> None:
    url = view_url(received(smtp_server)[("members", "ana@example.org")])
    assert "?t=" in url
    response = client.get(path_of(url))
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    issue = load_issue(sent / "issues" / "2019-01" / "issue.yaml")
    titles = {i.title for i in members_only_items(issue)}
    assert len(titles) >= 2 and leaked(page, titles) == titles  # every members-only item is there
    assert "Ana" in page  # their own greeting
    assert response.headers["Referrer-Policy"] == "no-referrer"  # the token stays on this site
    assert "no-store" in response.headers["Cache-Control"]


def test_the_members_page_is_refused_without_a_valid_token(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer
) -> None:
    secrets = secret_strings(load_issue(sent / "issues" / "2019-01" / "issue.yaml"))
    signer = tokens.Signer.from_secret(SECRET_KEY)
    url = view_url(received(smtp_server)[("members", "ana@example.org")])
    token = url.rsplit("t=", 1)[1]
    engine = make_engine(load_settings(sent).database_url())
    with transaction(engine) as session:  # a member who joined after the dispatch
        claim = signer.verify(tokens.Purpose.VIEW, token)
        assert claim is not None
        late = Subscriber(email="late@example.org", name="Late")
        session.add(late)
        session.flush()
        session.add(Subscription(subscriber_id=late.id, list_id=claim.list_id))
        session.flush()
        late_token = signer.sign(tokens.Purpose.VIEW, late.id, claim.list_id)
        ana_unsubscribe = signer.sign(tokens.Purpose.UNSUBSCRIBE, claim.subscriber_id, claim.list_id)
        # Bo was on the list but never got the issue (skipped: he left before his turn).
        bo_delivery = session.scalars(select(Delivery).where(Delivery.email == "bo@example.org")).one()
        bo_delivery.status = DeliveryStatus.SKIPPED
    engine.dispose()
    bo_token = view_url(received(smtp_server)[("members", "bo@example.org")]).rsplit("t=", 1)[1]
    answers = set()
    for bad in (token[:-2], ana_unsubscribe, late_token, bo_token, "x.y", ""):
        response = client.get(f"/issues/2019-01?t={bad}")
        page = response.get_data(as_text=True)
        assert not leaked(page, secrets)
        answers.add((response.status_code, page))
    assert len(answers) == 1
    status, page = answers.pop()
    assert status == 403 and 'href="/issues/2019-01"' in page


def test_the_archive_lists_issues_sent_to_a_public_list(client: FlaskClient) -> None:
    response = client.get("/issues/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert 'href="/issues/2019-01"' in page and "January 2019" in page
    assert client.get("/issues/2020-01").status_code == 404


def test_pictures_are_served_and_nothing_else_of_the_issue_folder(client: FlaskClient) -> None:
    with client.get("/issues/2019-01/images/logo.png") as response:
        assert response.status_code == 200 and response.data.startswith(b"\x89PNG")
        assert response.mimetype == "image/png"
    for path in (
        "/issues/2019-01/issue.yaml",
        "/issues/2019-01/../../mailout.toml",
        "/issues/2019-01/%2e%2e/%2e%2e/mailout.toml",
        "/issues/2019-01/images/missing.png",
    ):
        assert client.get(path).status_code == 404, path


def test_a_members_only_picture_is_only_at_the_address_the_members_version_gives(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer
) -> None:
    issue = load_issue(sent / "issues" / "2019-01" / "issue.yaml")
    [private] = private_images(issue)
    assert client.get(f"/issues/2019-01/{private}").status_code == 404  # its plain name
    public_page = client.get("/issues/2019-01").get_data(as_text=True)
    assert private not in public_page
    member_page = client.get(path_of(view_url(received(smtp_server)[("members", "ana@example.org")])))
    found = re.search(
        r'src="(/issues/2019-01/m/([0-9a-f]+)/' + re.escape(private) + ')"',
        member_page.get_data(as_text=True),
    )
    assert found, "the members' page loads it from its private address"
    with client.get(found.group(1)) as response:
        assert response.status_code == 200 and response.data.startswith(b"\x89PNG")
        assert response.headers["Cache-Control"].startswith("private")
    wrong = "0" * len(found.group(2))
    for path in (
        f"/issues/2019-01/m/{wrong}/{private}",
        f"/issues/2019-01/m/{found.group(2)}/images/logo.png",  # a digest opens only its own picture
        f"/issues/2019-01/m/{found.group(2)}/../../../mailout.toml",
        f"/issues/2019-01/m/{found.group(2)}/issue.yaml",
    ):
        assert client.get(path).status_code == 404, path


def test_an_image_file_outside_the_issue_folder_is_never_served(sent: Path) -> None:
    settings = load_settings(sent)
    (sent / "secret.png").write_bytes(b"\x89PNG not for you")
    (sent / "issues" / "2019-01" / "link.png").symlink_to(sent / "secret.png")
    assert archive.image_file(settings, "2019-01", "../../secret.png") is None
    assert archive.image_file(settings, "2019-01", "link.png") is None  # a symlink out of the folder
    assert archive.image_file(settings, "2019-01", "images/logo.png") is not None


def test_every_page_sends_the_security_headers(client: FlaskClient, smtp_server: SMTPServer) -> None:
    url = unsubscribe_url(received(smtp_server)[("members", "ana@example.org")])
    for path in (
        "/issues/",
        "/issues/2019-01",
        path_of(url),
        "/unsubscribe/x.y",
        "/preview/2019-01",
        "/nope",
    ):
        response = client.get(path)
        assert "default-src 'none'" in response.headers["Content-Security-Policy"], path
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Frame-Options"] == "DENY"


def test_the_static_archive_export(sent: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    code, output = run("archive", "export", str(out))
    assert code == 0, output
    assert "wrote 1 issue" in output
    index = (out / "index.html").read_text(encoding="utf-8")
    assert 'href="2019-01/index.html"' in index
    page = (out / "2019-01" / "index.html").read_text(encoding="utf-8")
    secrets = secret_strings(load_issue(sent / "issues" / "2019-01" / "issue.yaml"))
    assert not leaked(page, secrets)
    assert 'src="images/logo.png"' in page
    assert (out / "2019-01" / "images" / "logo.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "mailout.css").is_file()
    assert not list(out.rglob("*.yaml"))


def test_the_export_replaces_links_in_its_folder_and_never_writes_through_them(
    sent: Path, tmp_path: Path
) -> None:
    out = tmp_path / "site"
    (out / "2019-01" / "images").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    planted = {
        "index.html": "the index's target",
        ".index.html.tmp": "the old temporary name's target",
        "mailout.css": "the stylesheet's target",
        "2019-01/index.html": "the page's target",
        "2019-01/images/logo.png": "the picture's target",
    }
    for n, (name, text) in enumerate(planted.items()):
        target = outside / f"file-{n}"
        target.write_text(text, encoding="utf-8")
        (out / name).symlink_to(target)
    code, output = run("archive", "export", str(out))
    assert code == 0, output
    for n, text in enumerate(planted.values()):
        assert (outside / f"file-{n}").read_text(encoding="utf-8") == text, "a link's target was written"
    for name in ("index.html", "mailout.css", "2019-01/index.html", "2019-01/images/logo.png"):
        assert not (out / name).is_symlink(), f"{name} is still the planted link"
    assert "2019-01/index.html" in (out / "index.html").read_text(encoding="utf-8")
    assert (out / "2019-01" / "images" / "logo.png").read_bytes().startswith(b"\x89PNG")
    assert not [p for p in out.rglob("*.tmp") if not p.is_symlink()], "no temporary file is left behind"


@pytest.mark.parametrize("linked", ["2019-01", "2019-01/images"])
def test_the_export_refuses_a_linked_folder_before_writing(sent: Path, tmp_path: Path, linked: str) -> None:
    out = tmp_path / "site"
    (out / linked).parent.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / linked).symlink_to(outside, target_is_directory=True)
    result = CliRunner().invoke(cli, ["archive", "export", str(out)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"error: {out / linked}: a symbolic link; the export never writes through one"
        " (remove it, or export to another folder)"
    ]
    assert list(outside.iterdir()) == []
    assert not (out / "index.html").exists(), "nothing is written when the export is refused"


# --- the preview -----------------------------------------------------------------


def test_the_preview_shows_both_variants_rerendered_on_reload(sent: Path, client: FlaskClient) -> None:
    page = client.get("/preview/2019-01").get_data(as_text=True)
    assert page.count("<iframe") == 2 * len(grid_variants(page)) >= 4  # each variant at two widths
    assert "Members" in page and "Public" in page and "members-only left out" in page
    assert 'href="/preview/"' in page  # back to the preview's index
    issue_file = sent / "issues" / "2019-01" / "issue.yaml"
    issue_file.write_text(
        issue_file.read_text(encoding="utf-8").replace("SOLIDIFY, study visit", "SOLIDIFY, edited visit"),
        encoding="utf-8",
    )
    page = client.get("/preview/2019-01").get_data(as_text=True)
    assert "SOLIDIFY, edited visit" in page
    with client.get("/preview/2019-01/files/images/logo.png") as response:
        assert response.status_code == 200
    # Under another name than loopback's (DNS rebinding), the open preview is refused.
    assert client.get("/preview/2019-01", headers={"Host": "evil.example:8025"}).status_code == 403
    assert client.get("/preview/2019-01", headers={"Host": "127.0.0.1:8025"}).status_code == 200
    assert client.get("/preview/2019-01/files/issue.yaml").status_code == 404


def test_a_broken_issue_is_shown_with_its_file_and_line(sent: Path, client: FlaskClient) -> None:
    issue_file = sent / "issues" / "2019-01" / "issue.yaml"
    issue_file.write_text(
        issue_file.read_text(encoding="utf-8").replace("subject:", "subjet:", 1), encoding="utf-8"
    )
    response = client.get("/preview/2019-01")
    assert response.status_code == 422
    assert re.search(r"issue\.yaml:\d+", response.get_data(as_text=True))


def test_the_preview_needs_a_password_beyond_loopback(sent: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = create_app(load_settings(sent), local=False)
    assert closed.test_client().get("/preview/2019-01").status_code == 404  # no password: off
    monkeypatch.setenv("MAILOUT_PREVIEW_PASSWORD", "correct horse")
    app = create_app(load_settings(sent), local=False)
    client = app.test_client()
    response = client.get("/preview/2019-01")
    assert response.status_code == 401 and "Basic" in response.headers["WWW-Authenticate"]
    assert client.get("/preview/2019-01", auth=("team", "wrong")).status_code == 401
    assert client.get("/preview/2019-01", auth=("team", "correct horse")).status_code == 200
    # The links in messages need no password.
    assert client.get("/issues/2019-01").status_code == 200
    for each in (closed, app):
        each.extensions["mailout"].engine.dispose()


def test_an_app_that_fails_to_start_closes_its_database_connection(
    db_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("db", "upgrade")[0] == 0
    monkeypatch.setenv("MAILOUT_SECRET_KEY", SECRET_KEY)
    opened: list[Engine] = []

    def open_engine(url: str, **options: str) -> Engine:
        opened.append(web_db.open_engine(url, **options))
        return opened[-1]

    def broken(settings: Settings) -> None:
        raise ConfigError("locale/fr/LC_MESSAGES/web.po:3: broken")

    monkeypatch.setattr(web, "open_engine", open_engine)
    monkeypatch.setattr(web, "Words", broken)
    with pytest.raises(ConfigError, match=r"web\.po"):
        create_app(load_settings(db_workspace))
    [engine] = opened
    # open_engine read the schema's revision through it; after dispose the pool holds nothing.
    assert engine.pool.checkedin() == 0 and engine.pool.checkedout() == 0


def test_no_app_without_a_secret_key(sent: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILOUT_SECRET_KEY")
    with pytest.raises(ConfigError, match="MAILOUT_SECRET_KEY"):
        create_app(load_settings(sent))
    code, out = run("serve", "--port", "1")
    assert code == 1 and "MAILOUT_SECRET_KEY" in out


# --- unsubscribe requests by mail --------------------------------------------------------


def _mail(sender: str, subject: str, body: str = "") -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "unsubscribe@efus.example"
    message["Subject"] = subject
    message["Message-ID"] = f"<{abs(hash((sender, subject)))}@client.example>"
    message.set_content(body or "sent from my phone")
    return message.as_bytes()


def test_requests_to_the_mailto_address_are_processed_from_a_maildir(
    sent: Path, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    header = " ".join(str(received(smtp_server)[("members", "ana@example.org")]["List-Unsubscribe"]).split())
    mailto = re.search(r"<mailto:([^>]+)>", header).group(1)  # type: ignore[union-attr]
    subject = re.search(r"subject=([^&>]+)", mailto).group(1).replace("%20", " ")  # type: ignore[union-attr]
    assert subject.startswith("unsubscribe ")
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    box.add(_mail("alias@elsewhere.example", subject))  # the token decides, not the sender
    box.add(_mail("Cy Dupont <cy@example.org>", "Re: Efus Newsletter", "Unsubscribe me please"))
    box.add(_mail("stranger@example.net", "unsubscribe"))
    question = box.add(_mail("bo@example.org", "Question about the agenda", "When is the next meeting?"))
    box.add(_mail("bo@example.org", "unsubscribe test"))  # the mailto of a test message
    box.add(_mail("bo@example.org", "cancellation of the Lisbon visit"))

    code, out = run("subscribers", "unsubscribe-mail", str(tmp_path / "Maildir"), "--dry-run")
    assert code == 0, out
    assert "6 new messages; 2 would be unsubscribed" in out
    assert subscription_status(sent, "ana@example.org", "members") == "subscribed"

    code, out = run("subscribers", "unsubscribe-mail", str(tmp_path / "Maildir"))
    assert code == 0, out
    assert "6 new messages; 2 unsubscribed" in out
    assert subscription_status(sent, "ana@example.org", "members") == "unsubscribed"
    assert subscription_status(sent, "ana@example.org", "public") == "subscribed"
    assert subscription_status(sent, "cy@example.org", "public") == "unsubscribed"
    assert subscription_status(sent, "bo@example.org", "members") == "subscribed"
    assert re.search(r"unknown sender\s+stranger@example.net", out)
    assert re.search(r"ignored\s+bo@example.org\s+the link of a test message", out)
    assert len(re.findall(r"ignored\s+bo@example.org\s+no unsubscribe request", out)) == 2
    assert ("unsubscribed", "mail") in events(sent, "ana@example.org")
    # What was acted on is marked seen; what a person must read stays unread.
    box = mailbox.Maildir(tmp_path / "Maildir", create=False)
    assert "S" not in box.get_message(question).get_flags()
    assert sum("S" in m.get_flags() for m in box) == 2
    # Each message once: a run after a resubscription undoes nothing.
    code, out = run(
        "subscribers",
        "resubscribe",
        "cy@example.org",
        "--list",
        "public",
        "--reason",
        "asked",
        "--confirm-consent",
    )
    assert code == 0, out
    code, out = run("subscribers", "unsubscribe-mail", str(tmp_path / "Maildir"))
    assert "0 new messages (6 handled before); 0 unsubscribed" in out
    assert subscription_status(sent, "cy@example.org", "public") == "subscribed"


def test_an_mbox_file_an_encoded_token_and_a_wrong_path(
    sent: Path, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    header = " ".join(str(received(smtp_server)[("members", "bo@example.org")]["List-Unsubscribe"]).split())
    encoded = re.search(r"subject=([^&>]+)", header).group(1)  # type: ignore[union-attr]
    assert "%20" in encoded
    box = mailbox.mbox(tmp_path / "requests.mbox", create=True)
    box.add(_mail("bo@example.org", encoded))  # a client that left the space encoded
    box.add(b"From: \xff\xfe broken\r\n\r\n")
    box.close()
    code, out = run("subscribers", "unsubscribe-mail", str(tmp_path / "requests.mbox"))
    assert code == 0 and "2 new messages; 1 unsubscribed" in out, out
    assert re.search(r"ignored\s+.*broken", out)  # the odd one is reported, not fatal
    assert re.search(r"unsubscribed\s+bo@example.org\s+from list members", out)
    assert subscription_status(sent, "bo@example.org", "members") == "unsubscribed"
    code, out = run("subscribers", "unsubscribe-mail", str(tmp_path / "requests.mbox"))
    assert "handled before" in out
    code, out = run("subscribers", "unsubscribe-mail", str(tmp_path / "nowhere"))
    assert code == 1 and "no such Maildir or mbox" in out


def test_pages_that_only_read_do_not_wait_for_a_sqlite_writer(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer, database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's write lock; PostgreSQL readers never wait for writers")
    url = path_of(unsubscribe_url(received(smtp_server)[("members", "ana@example.org")]))
    writer = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a sending process in the middle of a commit, held
    try:
        started = time.monotonic()
        for path in ("/issues/", "/issues/2019-01", url, "/issues/2019-01/images/logo.png"):
            with client.get(path) as response:
                assert response.status_code == 200, path
        assert time.monotonic() - started < 5  # the busy timeout is 30 s: nothing waited for it
    finally:
        writer.rollback()
        writer.close()


def test_the_links_of_a_test_message_work_before_any_dispatch(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    code, out = run("test", "2019-01", "--to", "me@efus.example")
    assert code == 0, out
    app = create_app(load_settings(sending_workspace), local=True)
    client = app.test_client()
    try:
        for r in smtp_server.messages:
            html = r.message().get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
            pictures = re.findall(r'src="(https://news\.example/[^"]+)"', html)
            assert pictures
            for url in pictures:
                with client.get(path_of(url)) as response:
                    assert response.status_code == 200, url
            links = re.findall(r'href="(https://news\.example/[^"]+)"', html)
            assert {urlsplit(u).path for u in links} == {
                "/unsubscribe/test",
                "/preferences/test",
                "/preview/2019-01",
            }
            for url in links:
                assert client.get(path_of(url)).status_code == 200, url
    finally:
        app.extensions["mailout"].engine.dispose()


def test_the_factory_finds_the_workspace_like_a_command(sent: Path) -> None:
    # What `gunicorn 'mailout.web:create_app()'` does, from the workspace folder.
    assert Path.cwd() == sent
    app = create_app()
    try:
        assert app.test_client().get("/issues/2019-01").status_code == 200
        assert app.test_client().get("/preview/2019-01").status_code == 404  # not local, no password: off
    finally:
        app.extensions["mailout"].engine.dispose()


def test_the_page_cache_keeps_the_most_recently_used_pages_within_its_limit() -> None:
    cache = PageCache(limit=250)
    for key in ("a", "b"):
        cache.put(key, key.encode() * 100)
    assert cache.get("a") is not None  # "a" used last: "b" goes first
    cache.put("c", b"c" * 100)
    assert cache.held() == ["a", "c"] and cache.size == 200
    assert cache.get("b") is None
    big = cache.put("d", b"d" * 251)  # alone over the limit: answered, never kept
    assert big.body == b"d" * 251 and cache.held() == ["a", "c"]
    again = cache.put("a", b"A" * 50)
    assert cache.get("a") == again and cache.size == 150
    assert again.etag != cache.put("e", b"a" * 50).etag  # the tag is the content's


# --- languages: one issue in English and French -----------------------------------------

#: Readers and their languages: Dee reads Belgian French, which gets the French variant;
#: Eve has none, and gets the issue's default (English).
LANGUAGE_MEMBERS = [("ana@example.org", "Ana Conceição", "fr"), ("bo@example.org", "Bo Berg", "en"),
                    ("dee@example.org", "Dee Claes", "fr-BE")]  # fmt: skip
LANGUAGE_PUBLIC = [("cy@example.org", "Cy Dupont", "fr"), ("eve@example.org", "Eve Adams", "")]
FRENCH_SUBJECT = "Lettre d’information Efus – janvier 2019"


def french(issue: Issue) -> Issue:
    """Return the example issue with text of its own in French, members-only items included.

    Every text field differs from the English one, so that a leak of either language's
    members-only text shows (``secret_strings`` of each).
    """
    counter = iter(range(1, 1000))

    def item(i: Item, hidden: bool) -> Item:
        n = next(counter)
        words = "confidentiel réservé aux membres" if hidden else "public ouvert à tous"
        return replace(
            i,
            title=f"Titre français numéro {n}" + (" (réservé aux membres)" if hidden else ""),
            summary=f"Texte {words}, paragraphe numéro {n} de la lettre.",
            image_alt=f"Illustration française numéro {n}" if i.image_alt else "",
        )

    sections = tuple(
        replace(
            s,
            title=f"Rubrique française numéro {n}" if s.title else "",
            intro=f"Introduction française de la rubrique {n}." if s.intro else "",
            items=tuple(item(i, s.members_only or i.members_only) for i in s.items),
        )
        for n, s in enumerate(issue.sections, start=1)
    )
    return replace(
        issue,
        language="fr",
        languages=(),
        subject=FRENCH_SUBJECT,
        preheader="Rencontres, appels à partenaires et publications du réseau",
        intro="Bonjour à toutes et à tous : voici les nouvelles du réseau.",
        sections=sections,
    )


def languages_csv(workspace: Path, rows: list[tuple[str, str, str]], list_name: str) -> None:
    path = workspace / f"{list_name}.csv"
    path.write_text("email,name,language\n" + "".join(f"{e},{n},{lang}\n" for e, n, lang in rows), "utf-8")
    code, out = run("subscribers", "import", str(path), "--list", list_name)
    assert code == 0, out


def dispatch_in_two_languages(workspace: Path) -> None:
    """Dispatch the example issue in English and French to both lists, and send it.

    The dispatch is written as `send` writes one (one variant per language, each reader's
    chosen in the statement), then `send` takes it up and sends it.
    """
    settings = load_settings(workspace)
    issue = load_issue(workspace / "issues" / "2019-01" / "issue.yaml")
    engine = make_engine(settings.database_url())
    try:
        with transaction(engine) as session:
            for list_name, segment in (("members", Segment.MEMBER), ("public", Segment.PUBLIC)):
                lst = session.scalars(select(MailingList).where(MailingList.name == list_name)).one()
                english = replace(render_variant(issue.localized("en"), settings, segment), language="en")
                other = replace(
                    render_variant(french(issue.localized("en")), settings, segment), language="fr"
                )
                create_dispatch(
                    session, "2019-01", lst, english, others=[other], from_name="Efus",
                    from_address=settings.sender.address, reply_to="", generation=1,
                )  # fmt: skip
    finally:
        engine.dispose()
    for list_name in ("members", "public"):
        code, out = run("send", "2019-01", "--list", list_name, "--yes")
        assert code == 0, out


@pytest.fixture
def bilingual(sending_workspace: Path, smtp_server: SMTPServer) -> Path:
    """The example issue in English and French, sent to readers of both (and of none)."""
    languages_csv(sending_workspace, LANGUAGE_MEMBERS, "members")
    languages_csv(sending_workspace, LANGUAGE_PUBLIC, "public")
    dispatch_in_two_languages(sending_workspace)
    return sending_workspace


@pytest.fixture
def bilingual_client(bilingual: Path) -> Iterator[FlaskClient]:
    app = create_app(load_settings(bilingual), local=True)
    yield app.test_client()
    app.extensions["mailout"].engine.dispose()


def every_secret(workspace: Path) -> set[str]:
    """Return the members-only text of the issue in both its languages."""
    issue = load_issue(workspace / "issues" / "2019-01" / "issue.yaml")
    english, other = secret_strings(issue), secret_strings(french(issue))
    assert {s for s in other if "réservé aux membres" in s} and english - other
    return english | other


def html_lang(page: str) -> str:
    found = re.search(r"<html[^>]*\blang=\"([^\"]*)\"", page)
    assert found, page[:300]
    return found.group(1)


def test_each_reader_gets_links_in_the_language_of_their_variant(
    bilingual: Path, smtp_server: SMTPServer
) -> None:
    messages = received(smtp_server)
    for (list_name, address), message in messages.items():
        wanted = {"ana": "fr", "dee": "fr", "cy": "fr"}.get(address.split("@")[0], "en")
        assert str(message["Content-Language"]) == wanted, address
        assert unsubscribe_url(message).endswith(f"?lang={wanted}"), address
        view = view_url(message)
        assert urlsplit(view).path == f"/issues/2019-01/{wanted}", (address, view)
        assert ("?t=" in view) == (list_name == "members")
        # The mailto is the language's no more: the subject carries the token only.
        header = " ".join(str(message["List-Unsubscribe"]).split())
        assert re.search(r"<mailto:[^>]+subject=unsubscribe%20[A-Za-z0-9_.-]+>", header), header
        text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
        assert ("Titre français numéro" in text) == (wanted == "fr"), address


def test_the_unsubscribe_page_and_its_result_answer_in_french_from_a_french_message(
    bilingual: Path, bilingual_client: FlaskClient, smtp_server: SMTPServer
) -> None:
    client = bilingual_client
    url = path_of(unsubscribe_url(received(smtp_server)[("members", "ana@example.org")]))
    form = client.get(url)
    page = form.get_data(as_text=True)
    assert form.status_code == 200 and html_lang(page) == "fr" and 'dir="ltr"' in page
    assert "Ne plus envoyer <strong>Members</strong> à <strong>a•••@example.org</strong>\u00a0?" in page
    assert "Se désinscrire de toutes les listes de Efus Newsletter" in page
    assert "Unsubscribe" not in page.replace("Se désabonner", "")  # no English left on the page
    token = url.split("/")[-1].split("?")[0]
    assert f'action="/unsubscribe/{token}?lang=fr"' in page  # the result answers in French too
    done = client.post(f"/unsubscribe/{token}?lang=fr", data={"scope": "list"})
    result = done.get_data(as_text=True)
    assert done.status_code == 200 and html_lang(result) == "fr"
    assert "Votre désinscription est enregistrée" in result
    assert "Vous ne recevrez plus les messages de <strong>Members</strong>." in result
    assert subscription_status(bilingual, "ana@example.org", "members") == "unsubscribed"
    # Bo's message is English: so are his pages.
    bo = client.get(path_of(unsubscribe_url(received(smtp_server)[("members", "bo@example.org")])))
    assert html_lang(bo.get_data(as_text=True)) == "en" and "Stop sending" in bo.get_data(as_text=True)


def test_one_click_works_on_the_address_with_its_language(
    bilingual: Path, bilingual_client: FlaskClient, smtp_server: SMTPServer
) -> None:
    url = unsubscribe_url(received(smtp_server)[("members", "dee@example.org")])
    assert url.endswith("?lang=fr")
    # RFC 8058: the mail program POSTs to the List-Unsubscribe address exactly as it is.
    response = bilingual_client.post(
        path_of(url), data="List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 200 and "Location" not in response.headers
    assert html_lang(response.get_data(as_text=True)) == "fr"
    assert subscription_status(bilingual, "dee@example.org", "members") == "unsubscribed"
    assert events(bilingual, "dee@example.org")[-1] == ("unsubscribed", "one-click")


def test_a_forged_token_gets_the_same_404_in_every_language(
    bilingual: Path, bilingual_client: FlaskClient, smtp_server: SMTPServer
) -> None:
    token = (
        unsubscribe_url(received(smtp_server)[("members", "ana@example.org")]).split("/")[-1].split("?")[0]
    )
    body, mac = token.split(".")
    signer = tokens.Signer.from_secret(SECRET_KEY)
    bad = [f"{body}.{'A' * len(mac)}", token[:-3], body, signer.sign(tokens.Purpose.VIEW, 1, 1),
           signer.sign(tokens.Purpose.UNSUBSCRIBE, 999_999, 1), "%00<script>"]  # fmt: skip
    words = {"en": "not valid", "fr": "n’est pas valide", "es": "no es válido", "de": "ungültig",
             "it": "non è valido"}  # fmt: skip
    pages = {}
    for language, phrase in words.items():
        answers = set()
        for value in bad:
            for method in (bilingual_client.get, bilingual_client.post):
                response = method(
                    f"/unsubscribe/{value}?lang={language}", data={"List-Unsubscribe": "One-Click"}
                )
                answers.add((response.status_code, response.get_data(as_text=True)))
        assert len(answers) == 1, (language, answers)
        status, page = answers.pop()
        assert status == 404 and html_lang(page) == language and phrase in page, (language, page)
        pages[language] = page
    assert len(set(pages.values())) == len(words)  # each in its own words
    assert subscription_status(bilingual, "ana@example.org", "members") == "subscribed"


@pytest.mark.parametrize(
    ("value", "language"),
    [
        ("xx", "en"),
        ("english", "en"),
        ('fr"><script>alert(1)</script>', "en"),
        ("fr&lang=de", "en"),
        ("a" * 300, "en"),
        ("zz-ZZ", "en"),
        ("ar", "en"),  # a real language, but no words for it: the default
        ("FR", "fr"),
        ("fr_CA", "fr"),
        ("de-AT", "de"),
    ],
)
def test_a_language_parameter_is_checked_and_never_echoed(
    bilingual: Path, bilingual_client: FlaskClient, smtp_server: SMTPServer, value: str, language: str
) -> None:
    url = path_of(unsubscribe_url(received(smtp_server)[("members", "bo@example.org")])).split("?")[0]
    response = bilingual_client.get(url, query_string={"lang": value})
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and html_lang(page) == language
    assert f'?lang={language}"' in page  # the form posts the checked language
    for raw in (value, htmlmod.escape(value)):
        if len(raw) > 7:  # (a short one may be any word of the page)
            assert raw not in page, raw
    assert "<script>" not in page


def test_the_members_view_answers_in_the_language_of_the_link(
    bilingual: Path, bilingual_client: FlaskClient, smtp_server: SMTPServer
) -> None:
    issue = load_issue(bilingual / "issues" / "2019-01" / "issue.yaml")
    english_titles = {i.title for i in members_only_items(issue)}
    french_titles = {i.title for i in members_only_items(french(issue))}
    messages = received(smtp_server)
    ana = bilingual_client.get(path_of(view_url(messages[("members", "ana@example.org")])))
    page = ana.get_data(as_text=True)
    assert ana.status_code == 200 and ana.headers["Cache-Control"] == "private, no-store"
    assert html_lang(page) == "fr" and FRENCH_SUBJECT in page and "Ana" in page
    assert leaked(page, french_titles) == french_titles and not leaked(page, english_titles)
    # The switcher keeps the member's token: the English version of their own page.
    token = view_url(messages[("members", "ana@example.org")]).rsplit("t=", 1)[1]
    assert f'href="/issues/2019-01/en?t={token}"' in page
    english = bilingual_client.get(f"/issues/2019-01/en?t={token}").get_data(as_text=True)
    assert leaked(english, english_titles) == english_titles and not leaked(english, french_titles)
    assert "Ana" in english
    # A link without a language (as before languages): the language Ana was sent.
    plain = bilingual_client.get(f"/issues/2019-01?t={token}").get_data(as_text=True)
    assert html_lang(plain) == "fr" and leaked(plain, french_titles) == french_titles
    # A language the dispatch has not: the member's page in its default language, never a 404 for a member.
    other = bilingual_client.get(f"/issues/2019-01/de?t={token}")
    assert other.status_code == 200 and leaked(other.get_data(as_text=True), english_titles) == english_titles
    # A forged token in French: the refusal in French, nothing of either language's members' text.
    refused = bilingual_client.get("/issues/2019-01/fr?t=x.y")
    text = refused.get_data(as_text=True)
    assert refused.status_code == 403 and html_lang(text) == "fr" and "Lire la version publique" in text
    assert not leaked(text, every_secret(bilingual))


def hreflangs(page: str) -> dict[str, str]:
    return dict(re.findall(r'<link rel="alternate" hreflang="([^"]+)" href="([^"]+)">', page))


def test_each_language_has_its_page_and_they_name_each_other(bilingual_client: FlaskClient) -> None:
    client = bilingual_client
    expected = {
        "en": "https://news.example/issues/2019-01/en",
        "fr": "https://news.example/issues/2019-01/fr",
        "x-default": "https://news.example/issues/2019-01",
    }
    pages = {
        path: client.get(path) for path in ("/issues/2019-01", "/issues/2019-01/en", "/issues/2019-01/fr")
    }
    for path, response in pages.items():
        page = response.get_data(as_text=True)
        assert response.status_code == 200, path
        assert hreflangs(page) == expected, path  # both ways: each page names every other, and itself
        language = "fr" if path.endswith("/fr") else "en"
        assert html_lang(page) == language
        assert (FRENCH_SUBJECT in page) == (language == "fr")
        # The switcher: this language as the current one, the other as a link.
        other = "en" if language == "fr" else "fr"
        assert f'<strong aria-current="page" lang="{language}">' in page
        assert f'href="/issues/2019-01/{other}" hreflang="{other}" lang="{other}"' in page
    assert pages["/issues/2019-01"].get_data() == pages["/issues/2019-01/en"].get_data()
    assert "English" in pages["/issues/2019-01/fr"].get_data(as_text=True)
    assert "français" in pages["/issues/2019-01/en"].get_data(as_text=True)
    for path in ("/issues/2019-01/de", "/issues/2019-01/xx", "/issues/2020-01/fr"):
        assert client.get(path).status_code == 404, path
    with client.get("/issues/2019-01/images/logo.png") as picture:
        assert picture.status_code == 200  # pictures: unaffected


def index_entries(page: str) -> list[str]:
    return re.findall(r"<li lang=\"[^\"]+\">.*?</li>", page, re.DOTALL)


@pytest.mark.parametrize(
    ("query", "headers", "language", "words"),
    [
        ({}, {}, "en", "en"),
        ({}, {"Accept-Language": "fr-BE,fr;q=0.9,en;q=0.5"}, "fr", "fr"),
        # No German version: the issue in its default language, the page's own words in German.
        ({}, {"Accept-Language": "de-DE,de;q=0.9"}, "en", "de"),
        ({"lang": "fr"}, {"Accept-Language": "en"}, "fr", "fr"),  # the visitor's choice first
        ({"lang": "en"}, {"Accept-Language": "fr"}, "en", "en"),
        ({"lang": "<b>x"}, {"Accept-Language": "fr"}, "en", "en"),  # a bogus choice: the default
    ],
)
def test_the_index_lists_each_issue_once_in_the_visitors_choice(
    bilingual_client: FlaskClient, query: dict[str, str], headers: dict[str, str], language: str, words: str
) -> None:
    response = bilingual_client.get("/issues/", query_string=query, headers=headers)
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and "Accept-Language" in response.headers["Vary"]
    [entry] = index_entries(page)
    assert f'<li lang="{language}">' in entry
    if language == "fr":
        assert FRENCH_SUBJECT in entry and 'href="/issues/2019-01/fr"' in entry
        assert 'href="/issues/2019-01" hreflang="en" lang="en">English</a>' in entry
        assert html_lang(page) == "fr" and "Aussi en" in page and "numéros précédents" in page
    else:
        assert "January 2019" in entry and FRENCH_SUBJECT not in entry and 'href="/issues/2019-01"' in entry
        assert 'href="/issues/2019-01/fr" hreflang="fr" lang="fr">français</a>' in entry
        assert html_lang(page) == words and "<b>x" not in page
    # The index itself in each language the issues are written in.
    assert 'href="/issues/?lang=fr"' in page or 'lang="fr">français</strong>' in page


def test_no_public_page_in_any_language_shows_members_only_text(
    bilingual: Path, bilingual_client: FlaskClient
) -> None:
    secrets = every_secret(bilingual)
    paths = ["/issues/", "/issues/?lang=fr", "/issues/?lang=en", "/issues/2019-01", "/issues/2019-01/en",
             "/issues/2019-01/fr", "/issues/2019-01/fr?t=x.y", "/issues/2019-01?t="]  # fmt: skip
    pages = 0
    for path in paths:
        for accept in ("fr", "en", "de"):
            page = bilingual_client.get(path, headers={"Accept-Language": accept}).get_data(as_text=True)
            assert not leaked(page, secrets), (path, accept, leaked(page, secrets))
            pages += 1
    assert pages == 24
    # And the French public page has French public text: the test looks where it should.
    page = bilingual_client.get("/issues/2019-01/fr").get_data(as_text=True)
    assert "public ouvert à tous" in page


def test_the_export_writes_every_language_with_relative_hreflang_and_no_members_text(
    bilingual: Path, tmp_path: Path
) -> None:
    out = tmp_path / "site"
    code, output = run("archive", "export", str(out))
    assert code == 0, output
    top, english, other = (out / "2019-01" / "index.html", out / "2019-01" / "en" / "index.html",
                           out / "2019-01" / "fr" / "index.html")  # fmt: skip
    secrets = every_secret(bilingual)
    for path, base, language in ((top, "", "en"), (english, "../", "en"), (other, "../", "fr")):
        page = path.read_text(encoding="utf-8")
        assert hreflangs(page) == {
            "en": f"{base}en/index.html", "fr": f"{base}fr/index.html", "x-default": f"{base}index.html",
        }, path  # fmt: skip
        assert html_lang(page) == language and (FRENCH_SUBJECT in page) == (language == "fr")
        assert f'src="{base}images/logo.png"' in page  # the pictures, from the issue's folder
        assert not leaked(page, secrets), (path, leaked(page, secrets))
    for page in out.rglob("*.html"):
        assert not leaked(page.read_text(encoding="utf-8"), secrets), page
    assert {p.relative_to(out).as_posix() for p in out.rglob("index.html")} == {
        "index.html", "2019-01/index.html", "2019-01/en/index.html", "2019-01/fr/index.html",
    }  # fmt: skip
    index = (out / "index.html").read_text(encoding="utf-8")
    assert len(index_entries(index)) == 1
    assert 'href="2019-01/index.html"' in index and 'href="2019-01/fr/index.html"' in index
    assert (out / "2019-01" / "images" / "logo.png").read_bytes().startswith(b"\x89PNG")


# --- the pages' own words ------------------------------------------------------------------


def web_msgids() -> set[str]:
    """Every msgid the web pages use: their templates', and those written in Python."""
    return {m if isinstance(m, str) else m[0] for m in i18n.messages(None, "web")}


def test_the_web_msgids_include_those_written_in_python() -> None:
    # What `scripts/catalogs update --domain web` keeps and `check` (missing_strings) asks for.
    msgids = web_msgids()
    written_in_python = {
        "The service is busy.",  # _() in web/views.py
        "There is no issue at this address in the archive.",  # N_() in web/views.py
        "This issue in other languages",  # i18n.gettext(..., "web") in archive.py
    }
    assert written_in_python <= msgids
    assert written_in_python <= set(i18n.missing_strings(None, "xx", "web")), "a language without a catalog"
    assert "Stop sending %(list)s to %(address)s?" in msgids, "and the templates' own"


@pytest.mark.parametrize("language", ["fr", "es", "de", "it"])
def test_every_word_of_the_web_pages_is_translated(repo_settings: Settings, language: str) -> None:
    msgids = web_msgids()
    assert len(msgids) >= 25 and "Stop sending %(list)s to %(address)s?" in msgids
    catalog = i18n.translations(repo_settings, language, "web")
    untranslated = {m for m in msgids if catalog.gettext(m) == m and m != "unsubscribe"}
    assert not untranslated, untranslated
    assert i18n.missing_strings(repo_settings, language, "web") == []
    # Placeholders survive translation: a missing %(list)s would drop the list's name.
    for message in msgids:
        assert sorted(re.findall(r"%\(\w+\)s", catalog.gettext(message))) == sorted(
            re.findall(r"%\(\w+\)s", message)
        ), (language, message)


def test_the_word_a_reply_must_hold_is_one_the_mailbox_understands(repo_settings: Settings) -> None:
    from mailout.unsubmail import _WORD

    for language in ("en", "fr", "es", "de", "it"):
        word = i18n.gettext(repo_settings, language, "unsubscribe", "web")
        assert _WORD.search(f"Re: {word}"), (language, word)


def grid_variants(page: str) -> list[tuple[str, str]]:
    """Return the (segment, language) of each variant a preview grid shows, in order."""
    return re.findall(
        r'<section class="variant" id="[^"]+" data-segment="(\w+)" data-language="([\w-]+)">', page
    )


def test_the_preview_grid_shows_every_segment_and_language(sent: Path, client: FlaskClient) -> None:
    settings = load_settings(sent)
    issue = load_issue(sent / "issues" / "2019-01" / "issue.yaml")
    expected = [
        (str(s), lang) for lang in issue.variant_languages(settings.newsletter.language) for s in Segment
    ]
    assert client.get("/preview/").get_data(as_text=True).count('href="/preview/2019-01"') == 1  # reachable
    page = client.get("/preview/2019-01").get_data(as_text=True)
    assert grid_variants(page) == expected
    # Each variant at both widths, labelled with its segment and its language's own name.
    assert page.count('class="desktop"') == page.count('class="mobile"') == len(expected)
    for segment, language in expected:
        label = (
            f"{'Members' if segment == 'member' else 'Public'} · {i18n.language_name(language)} ({language})"
        )
        assert f"<h2>{label}</h2>" in page
        assert f'title="{label}, desktop"' in page and f'title="{label}, mobile"' in page


def test_mailout_preview_writes_every_variant_and_the_grid(sent: Path) -> None:
    code, out = run("preview", "2019-01")
    assert code == 0, out
    folder = sent / "build" / "2019-01"
    grid = (folder / "index.html").read_text(encoding="utf-8")
    issue = load_issue(sent / "issues" / "2019-01" / "issue.yaml")
    languages = issue.variant_languages(load_settings(sent).newsletter.language)
    assert grid_variants(grid) == [(str(s), lang) for lang in languages for s in Segment]
    sources = re.findall(r'<iframe class="(?:desktop|mobile)"[^>]* src="([^"]+)"', grid)
    assert len(sources) == 2 * len(Segment) * len(languages)
    for name in sources:  # every frame's file is there, and is a variant's HTML
        assert (folder / name).read_text(encoding="utf-8").startswith("<!doctype html>"), name
    assert (folder / "mailout.css").is_file() and 'href="mailout.css"' in grid
