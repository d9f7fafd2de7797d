"""The preference page in every message's footer, on SQLite and PostgreSQL, after real dispatches.

The links come from the messages the test SMTP server received, as a reader would
follow them; the changes are read back from the consent history.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import re
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from mailout import signup, tokens
from mailout.config import load_settings
from mailout.db import WriteQueue, make_engine, transaction
from mailout.issues import load_issue
from mailout.models import (
    ConsentEvent,
    ConsentText,
    Delivery,
    Dispatch,
    EventKind,
    MailingList,
    Source,
    Subscriber,
    SubscriberStatus,
    Subscription,
)
from mailout.outbox import create_dispatch
from mailout.render import Recipient, first_name, render_variant
from mailout.segments import Segment
from mailout.subscribers import unsubscribe_by_link, update_preferences
from mailout.web import create_app
from tests.conftest import SECRET_KEY, edit_config
from tests.smtpserver import SMTPServer
from tests.test_web import MEMBERS, PUBLIC, import_list, path_of, received, run, unsubscribe_url

pytestmark = pytest.mark.slow

SIGNER = tokens.Signer.from_secret(SECRET_KEY)
_LINK = re.compile(r"https://news\.example/preferences/[A-Za-z0-9_.-]+(?:\?lang=[\w-]+)?")


def preferences_links(message: EmailMessage) -> tuple[list[str], list[str]]:
    """Return the preference links of a message's HTML part and of its text part."""
    html = message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    return _LINK.findall(html), _LINK.findall(text)


def open_signup(workspace: Path) -> None:
    """Open the public list to sign-up: the page offers it to every reader."""
    edit_config(workspace, ('description = "Public"\n', 'description = "Public"\npublic_signup = true\n'))


@pytest.fixture
def sent(sending_workspace: Path, smtp_server: SMTPServer) -> Path:
    """The example issue dispatched to a members list and a public list; the public one open."""
    open_signup(sending_workspace)
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


@pytest.fixture
def engine(sent: Path) -> Iterator[Engine]:
    engine = make_engine(load_settings(sent).database_url())
    yield engine
    engine.dispose()


def link_of(smtp_server: SMTPServer, list_name: str, address: str) -> str:
    html, text = preferences_links(received(smtp_server)[(list_name, address)])
    assert len(html) == 1 and html == text, (html, text)
    return path_of(html[0])


def ids(engine: Engine, address: str) -> tuple[int, dict[str, int]]:
    with transaction(engine) as session:
        person = session.scalar(select(Subscriber.id).where(Subscriber.email == address))
        lists = dict(session.execute(select(MailingList.name, MailingList.id)).all())
    assert person is not None
    return person, lists


def events(engine: Engine, address: str) -> list[tuple[str, str, str, str | None, str]]:
    with transaction(engine) as session:
        rows = session.execute(
            select(
                ConsentEvent.kind,
                ConsentEvent.source,
                ConsentEvent.detail,
                MailingList.name,
                ConsentEvent.page,
            )
            .join(Subscriber, Subscriber.id == ConsentEvent.subscriber_id)
            .outerjoin(MailingList, MailingList.id == ConsentEvent.list_id)
            .where(Subscriber.email == address, ConsentEvent.source == Source.PREFERENCES)
            .order_by(ConsentEvent.id)
        ).all()
    return [(str(k), str(s), d, n, p) for k, s, d, n, p in rows]


def subscriptions(engine: Engine, address: str) -> dict[str, str]:
    with transaction(engine) as session:
        rows = session.execute(
            select(MailingList.name, Subscription.status)
            .join(Subscription, Subscription.list_id == MailingList.id)
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(Subscriber.email == address)
        ).all()
    return {name: str(status) for name, status in rows}


def person(engine: Engine, address: str) -> tuple[str, str, str]:
    with transaction(engine) as session:
        row = session.execute(
            select(Subscriber.name, Subscriber.language, Subscriber.status).where(Subscriber.email == address)
        ).one()
    return row[0], row[1], str(row[2])


def form(name: str, language: str, lists: list[int], *, leave_all: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"name": name, "language": language, "list": [str(i) for i in lists]}
    if leave_all:
        data["leave_all"] = "1"
    return data


# --- the link in every message ----------------------------------------------------------------


def test_the_footer_link_of_a_real_message_opens_the_readers_own_page(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer, engine: Engine
) -> None:
    ana, lists = ids(engine, "ana@example.org")
    for list_name in ("members", "public"):
        url = link_of(smtp_server, list_name, "ana@example.org")
        claim = SIGNER.verify(tokens.Purpose.PREFERENCES, urlsplit(url).path.rsplit("/", 1)[1])
        assert claim is not None and (claim.subscriber_id, claim.list_id) == (ana, lists[list_name])
        for _ in range(3):  # a mail scanner: a GET changes nothing
            response = client.get(url)
            assert response.status_code == 200
        page = response.get_data(as_text=True)
        assert 'method="post"' in page and 'value="Ana Conceição"' in page
        assert "ana@example.org" not in page and "a•••" in page
        # Both lists she is on, checked; no cookie, the app's own policy, no script.
        assert page.count('name="list"') == 2 and page.count(" checked") == 2
        assert "Set-Cookie" not in response.headers and "<script" not in page
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert response.headers["X-Robots-Tag"] == "noindex"
    assert events(engine, "ana@example.org") == []
    # Bo is on the members list only: the public list is open to him, unchecked.
    page = client.get(link_of(smtp_server, "members", "bo@example.org")).get_data(as_text=True)
    assert re.search(rf'name="list" value="{lists["public"]}"(?! checked)', page)
    assert re.search(rf'name="list" value="{lists["members"]}" checked', page)


def test_the_page_answers_in_the_language_of_its_link(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer
) -> None:
    url = link_of(smtp_server, "members", "ana@example.org")
    assert url.endswith("?lang=en")
    french = client.get(url.replace("?lang=en", "?lang=fr")).get_data(as_text=True)
    assert '<html lang="fr"' in french and "Vos préférences" in french and "Enregistrer" in french
    assert "?lang=fr" in re.search(r'action="([^"]+)"', french).group(1)  # type: ignore[union-attr]


# --- changes and the consent history ----------------------------------------------------------


def test_each_change_is_a_consent_event_and_nothing_changed_writes_none(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer, engine: Engine
) -> None:
    _, lists = ids(engine, "ana@example.org")
    url = link_of(smtp_server, "members", "ana@example.org")
    # Unchanged: the form as the page shows it.
    response = client.post(url, data=form("Ana Conceição", "", [lists["members"], lists["public"]]))
    assert response.status_code == 200 and "already as you sent them" in response.get_data(as_text=True)
    assert events(engine, "ana@example.org") == []
    response = client.post(url, data=form("Ana C. Silva", "fr", [lists["members"]]))
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "You left <strong>Public</strong>." in page and "Your name is changed." in page
    assert person(engine, "ana@example.org") == ("Ana C. Silva", "fr", "subscribed")
    assert subscriptions(engine, "ana@example.org") == {"members": "subscribed", "public": "unsubscribed"}
    found = events(engine, "ana@example.org")
    assert found == [
        ("changed", "preferences", "name changed", None, "/preferences/"),
        ("changed", "preferences", "language: - -> fr", None, "/preferences/"),
        ("unsubscribed", "preferences", "", "public", "/preferences/"),
    ]
    assert not any("ana@" in detail or "Silva" in detail for _, _, detail, _, _ in found)
    # The same form again: nothing more.
    client.post(url, data=form("Ana C. Silva", "fr", [lists["members"]]))
    assert len(events(engine, "ana@example.org")) == 3
    # She left the public list: the page does not bring her back (a forwarded message's
    # link would let anyone do it); the sign-up form's double opt-in does.
    page = client.get(url).get_data(as_text=True)
    assert re.search(rf'name="list" value="{lists["public"]}" disabled', page)
    assert "You left this list" in page
    response = client.post(url, data=form("Ana C. Silva", "fr", [lists["members"], lists["public"]]))
    assert "Not joined: <strong>Public</strong>" in response.get_data(as_text=True)
    assert subscriptions(engine, "ana@example.org")["public"] == "unsubscribed"
    assert len(events(engine, "ana@example.org")) == 3


def test_a_list_joined_on_the_page_records_the_consent_text_it_showed(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer, engine: Engine
) -> None:
    _, lists = ids(engine, "bo@example.org")
    url = link_of(smtp_server, "members", "bo@example.org")
    shown = client.get(url).get_data(as_text=True)
    consent = signup.consent_text(load_settings(sent), "en")
    assert html.escape(consent, quote=False) in shown
    client.post(url, data=form("Bo Berg", "", [lists["members"], lists["public"]]))
    assert subscriptions(engine, "bo@example.org") == {"members": "subscribed", "public": "subscribed"}
    with engine.connect() as conn:
        digest = conn.execute(
            select(ConsentEvent.consent_sha256)
            .join(Subscriber, Subscriber.id == ConsentEvent.subscriber_id)
            .where(Subscriber.email == "bo@example.org", ConsentEvent.kind == EventKind.SUBSCRIBED)
            .order_by(ConsentEvent.id.desc())
        ).scalar()
        kept = conn.execute(select(ConsentText.text).where(ConsentText.sha256 == digest)).scalar()
    assert digest == hashlib.sha256(consent.encode()).hexdigest() and kept == consent


def test_a_bad_name_is_refused_before_anything_is_written(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer, engine: Engine
) -> None:
    _, lists = ids(engine, "bo@example.org")
    url = link_of(smtp_server, "members", "bo@example.org")
    response = client.post(url, data=form("Bo\r\nBcc: x@evil.example", "fr", []))
    assert response.status_code == 422 and "Please check the name" in response.get_data(as_text=True)
    response = client.post(url, data=form("B" * 201, "fr", []))
    assert response.status_code == 422
    assert events(engine, "bo@example.org") == []
    assert subscriptions(engine, "bo@example.org") == {"members": "subscribed"}
    # A language the menu does not offer (a forged form) keeps the one they have.
    client.post(url, data=form("Bo Berg", "x-klingon", [lists["members"]]))
    assert person(engine, "bo@example.org") == ("Bo Berg", "", "subscribed")


def test_a_members_list_can_be_left_but_never_joined(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer, engine: Engine
) -> None:
    _, lists = ids(engine, "bo@example.org")
    url = link_of(smtp_server, "members", "bo@example.org")
    page = client.get(url).get_data(as_text=True)
    assert "only the network adds its members" in page
    client.post(url, data=form("Bo Berg", "", []))
    assert subscriptions(engine, "bo@example.org") == {"members": "unsubscribed"}
    # He is no longer on it: the page does not offer it, and a forged form cannot add it.
    page = client.get(url).get_data(as_text=True)
    assert f'name="list" value="{lists["members"]}"' not in page
    response = client.post(url, data=form("Bo Berg", "", [lists["members"]]))
    assert subscriptions(engine, "bo@example.org") == {"members": "unsubscribed"}
    # Cy (public list only) never sees the members list, and forging it does nothing.
    cy = link_of(smtp_server, "public", "cy@example.org")
    assert "Members" not in client.get(cy).get_data(as_text=True)
    response = client.post(cy, data=form("Cy Dupont", "", [lists["public"], lists["members"]]))
    assert response.status_code == 200
    assert subscriptions(engine, "cy@example.org") == {"public": "subscribed"}
    # And the domain refuses it whatever the caller offers.
    cy_id, _ = ids(engine, "cy@example.org")
    with WriteQueue(engine).transaction() as conn:
        done = update_preferences(
            conn, cy_id, lists["public"], name="Cy Dupont", language="", lists={lists["members"]: True},
            leave_all=False, page="/preferences/",
        )  # fmt: skip
    assert done is not None and done.refused == ("members",) and not done.changed
    assert subscriptions(engine, "cy@example.org") == {"public": "subscribed"}


def test_someone_who_left_everything_sees_it_and_joins_only_through_the_signup_form(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer, engine: Engine
) -> None:
    _, lists = ids(engine, "bo@example.org")
    url = link_of(smtp_server, "members", "bo@example.org")
    response = client.post(url, data=form("Bo Berg", "", [lists["members"]], leave_all=True))
    assert "no more messages from Efus Newsletter, on any list" in response.get_data(as_text=True)
    assert person(engine, "bo@example.org")[2] == "unsubscribed"
    assert events(engine, "bo@example.org") == [
        ("unsubscribed", "preferences", "every list, from the preference page", None, "/preferences/")
    ]
    page = client.get(url).get_data(as_text=True)
    assert "it was unsubscribed from every list" in page and "https://news.example/subscribe" in page
    assert re.search(rf'name="list" value="{lists["public"]}" disabled', page)
    response = client.post(url, data=form("Bo Berg", "", [lists["public"]]))
    assert "Not joined: <strong>Public</strong>" in response.get_data(as_text=True)
    assert subscriptions(engine, "bo@example.org") == {"members": "unsubscribed"}
    assert len(events(engine, "bo@example.org")) == 1


def test_leaving_everything_skips_what_a_running_dispatch_still_has_queued(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer, engine: Engine
) -> None:
    settings = load_settings(sent)
    with transaction(engine) as session:
        lst = session.scalars(select(MailingList).where(MailingList.name == "members")).one()
        variant = render_variant(
            load_issue(sent / "issues" / "2019-01" / "issue.yaml"), settings, Segment.MEMBER
        )
        dispatch_id = create_dispatch(
            session, "2019-01", lst, variant, from_name="N", from_address="n@efus.example", reply_to="",
            generation=2,
        ).id  # fmt: skip
    url = link_of(smtp_server, "members", "bo@example.org")
    client.post(url, data=form("Bo Berg", "", [], leave_all=True))
    with transaction(engine) as session:
        states = dict(
            session.execute(
                select(Delivery.email, Delivery.status).where(Delivery.dispatch_id == dispatch_id)
            ).all()
        )
    assert states == {"bo@example.org": "skipped", "ana@example.org": "queued"}


# --- forged links -------------------------------------------------------------------------------


def test_bad_tokens_and_erased_people_get_the_unsubscribe_links_404(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer, engine: Engine
) -> None:
    url = link_of(smtp_server, "members", "ana@example.org")
    token = urlsplit(url).path.rsplit("/", 1)[1]
    body, mac = token.split(".")
    other = tokens.Signer.from_secret("another-key-of-another-site-000")
    bo, lists = ids(engine, "bo@example.org")
    bad = {
        "forged mac": f"{body}.{'A' * len(mac)}",
        "truncated": token[:-3],
        "an unsubscribe token": SIGNER.sign(tokens.Purpose.UNSUBSCRIBE, bo, lists["members"]),
        "a view token": SIGNER.sign(tokens.Purpose.VIEW, bo, lists["members"]),
        "another key": other.sign(tokens.Purpose.PREFERENCES, bo, lists["members"]),
        "unknown subscriber": SIGNER.sign(tokens.Purpose.PREFERENCES, 999_999, lists["members"]),
        "unknown list": SIGNER.sign(tokens.Purpose.PREFERENCES, bo, 999_999),
        "garbage": "%00%0d%0a<script>",
    }
    unsubscribe_404 = client.get("/unsubscribe/not-a-token")
    assert unsubscribe_404.status_code == 404
    expected = unsubscribe_404.get_data()
    for what, value in bad.items():
        for method in (client.get, client.post):
            response = method(f"/preferences/{value}", data=form("X", "fr", [lists["public"]]))
            assert (response.status_code, response.get_data()) == (404, expected), what
    # An erased person: their token is still validly signed, and gets the same page.
    with transaction(engine) as session:
        session.execute(update(Subscriber).where(Subscriber.id == bo).values(status=SubscriberStatus.ERASED))
    bo_url = link_of(smtp_server, "members", "bo@example.org")
    for method in (client.get, client.post):
        response = method(bo_url, data=form("X", "fr", [lists["public"]]))
        assert (response.status_code, response.get_data()) == (404, expected)
    assert events(engine, "bo@example.org") == [] and person(engine, "bo@example.org")[:2] == ("Bo Berg", "")


def test_the_links_of_test_messages_and_previews_change_nobody(client: FlaskClient) -> None:
    for token in ("test", "preview"):
        for method in (client.get, client.post):
            response = method(f"/preferences/{token}", data={"leave_all": "1"})
            assert response.status_code == 200 and "test message" in response.get_data(as_text=True)


# --- at the same time ---------------------------------------------------------------------------


def _in_thread(work: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(work()))
    thread.start()
    return thread, out


def test_two_posts_at_once_record_each_change_once(sent: Path, engine: Engine) -> None:
    bo, lists = ids(engine, "bo@example.org")
    other = make_engine(load_settings(sent).database_url())

    def change(conn: Any) -> Any:
        return update_preferences(
            conn, bo, lists["members"], name="Bo Berg", language="fr",
            lists={lists["members"]: True, lists["public"]: True}, leave_all=False, page="/preferences/",
        )  # fmt: skip

    try:
        with WriteQueue(engine).transaction() as first:
            assert change(first) is not None
            # The second waits for the first's lock (the row on PostgreSQL, the file on SQLite)...
            thread, out = _in_thread(lambda: _run(other, change))
            thread.join(0.5)
            assert thread.is_alive()
        thread.join(30)
    finally:
        other.dispose()
    # ...then finds nothing left to change.
    assert out and not out[0].changed
    kinds = [(k, d, n) for k, _, d, n, _ in events(engine, "bo@example.org")]
    assert kinds == [("changed", "language: - -> fr", None), ("subscribed", "", "public")]
    assert subscriptions(engine, "bo@example.org") == {"members": "subscribed", "public": "subscribed"}


def _run(engine: Engine, work: Any) -> Any:
    with WriteQueue(engine).transaction() as conn:
        return work(conn)


@pytest.mark.parametrize("first", ["preferences", "unsubscribe"])
def test_a_post_racing_an_unsubscribe_from_every_list_never_keeps_a_list(
    sent: Path, engine: Engine, first: str
) -> None:
    bo, lists = ids(engine, "bo@example.org")
    other = make_engine(load_settings(sent).database_url())

    def join(conn: Any) -> Any:
        return update_preferences(
            conn, bo, lists["members"], name="Bo Berg", language="",
            lists={lists["members"]: True, lists["public"]: True}, leave_all=False, page="/preferences/",
        )  # fmt: skip

    def leave(conn: Any) -> Any:
        return unsubscribe_by_link(conn, bo, lists["members"], Source.LINK, every_list=True)

    works = (join, leave) if first == "preferences" else (leave, join)
    try:
        with WriteQueue(engine).transaction() as conn:
            done_first = works[0](conn)
            thread, out = _in_thread(lambda: _run(other, works[1]))
            thread.join(0.5)
            assert thread.is_alive(), "the second waits for the first"
        thread.join(30)
    finally:
        other.dispose()
    assert out, "the second finished"
    # Whichever came first, the unsubscribe from every list wins: no list is left on.
    assert person(engine, "bo@example.org")[2] == "unsubscribed"
    if first == "preferences":
        # The join committed first; the unsubscribe then ended it with every other list.
        assert done_first.joined == ("public",)
        assert subscriptions(engine, "bo@example.org") == {
            "members": "unsubscribed",
            "public": "unsubscribed",
        }
    else:
        # The join found him unsubscribed: refused, nothing written.
        assert out[0].joined == () and out[0].refused == ("members", "public")
        assert subscriptions(engine, "bo@example.org") == {"members": "unsubscribed"}


# --- the next dispatch, and dispatches frozen before the link -----------------------------------


def test_a_language_chosen_on_the_page_is_the_next_dispatchs(
    sent: Path, client: FlaskClient, smtp_server: SMTPServer, engine: Engine
) -> None:
    _, lists = ids(engine, "cy@example.org")
    client.post(
        link_of(smtp_server, "public", "cy@example.org"), data=form("Cy Dupont", "fr", [lists["public"]])
    )
    assert person(engine, "cy@example.org")[1] == "fr"
    code, out = run("send", "2019-01", "--list", "public", "--again", "--yes")
    assert code == 0, out
    with transaction(engine) as session:
        chosen = dict(
            session.execute(
                select(Delivery.email, Delivery.language)
                .join(Dispatch, Dispatch.id == Delivery.dispatch_id)
                .where(Dispatch.generation == 2)
            ).all()
        )
    assert chosen == {"cy@example.org": "fr", "ana@example.org": "en"}
    # The new message's link opens her page in French.
    message = [r.message() for r in smtp_server.messages if r.rcpt_tos == ["cy@example.org"]][-1]
    html, text = preferences_links(message)
    assert html == text and html[0].endswith("?lang=fr")


def without_preferences_link(variant: Any) -> Any:
    """Return ``variant`` as the code before the preference link froze it: no such placeholder."""
    token = next(t for t, key in variant.tokens.items() if key == "preferences_url")
    html = re.sub(rf' · <a href="{token}"[^>]*>Preferences</a>', "", variant.html)
    text = re.sub(rf"\nPreferences: {token}", "", variant.text)
    assert token not in html and token not in text
    tokens_left = {t: key for t, key in variant.tokens.items() if key != "preferences_url"}
    return dataclasses.replace(variant, html=html, text=text, tokens=tokens_left)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_dispatch_frozen_before_the_link_sends_exactly_as_before(
    sending_workspace: Path, smtp_server: SMTPServer
) -> None:
    import_list(sending_workspace, MEMBERS, "members")
    settings = load_settings(sending_workspace)
    issue = load_issue(sending_workspace / "issues" / "2019-01" / "issue.yaml")
    old = without_preferences_link(render_variant(issue, settings, Segment.MEMBER))
    engine = make_engine(settings.database_url())
    try:
        with transaction(engine) as session:
            lst = session.scalars(select(MailingList).where(MailingList.name == "members")).one()
            create_dispatch(
                session, "2019-01", lst, old, from_name="Efus", from_address=settings.sender.address,
                reply_to="", generation=1,
            )  # fmt: skip
    finally:
        engine.dispose()
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out
    assert len(smtp_server.messages) == len(MEMBERS)
    for r in smtp_server.messages:
        message = r.message()
        html = message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
        text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
        assert "/preferences/" not in html + text
        # Exactly the frozen documents filled in, as the code of their time filled them.
        name = dict(MEMBERS)[r.rcpt_tos[0]]
        unsubscribe = unsubscribe_url(message)
        view = re.search(r'href="(https://news\.example/issues/[^"]+)"', html).group(1)  # type: ignore[union-attr]
        expected_html, expected_text = old.personalize(
            Recipient(first_name(name), unsubscribe, view.replace("&amp;", "&"), "unused")
        )
        assert html.replace("\r\n", "\n") == expected_html and text.replace("\r\n", "\n") == expected_text
        assert not any(t in html + text for t in old.tokens)


# --- in a browser -------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_page_fits_a_phone_without_scrolling_sideways(
    browser: Any, client: FlaskClient, smtp_server: SMTPServer
) -> None:
    url = "https://news.example" + link_of(smtp_server, "members", "ana@example.org")

    def serve(route: Any) -> None:
        # The app answers through its test client: the page, its stylesheet, as a server would.
        parts = urlsplit(route.request.url)
        with client.get(parts.path + (f"?{parts.query}" if parts.query else "")) as response:
            body = response.get_data()
        route.fulfill(status=response.status_code, headers=dict(response.headers), body=body)

    page = browser.new_page(viewport={"width": 375, "height": 800})
    try:
        page.route("https://news.example/**", serve)
        failed: list[str] = []
        page.on("requestfailed", lambda request: failed.append(request.url))
        page.goto(url)
        page.wait_for_load_state("load")
        assert page.evaluate("window.innerWidth") == 375
        scroll = page.evaluate("document.documentElement.scrollWidth")
        assert scroll <= 375, f"horizontal scrolling at 375px: {scroll}px wide"
        # The stylesheet applied (the fields take the page's width), and every field is inside it.
        widths = page.evaluate(
            "Array.from(document.querySelectorAll('input, select, button, label'))"
            ".map(e => e.getBoundingClientRect().right)"
        )
        assert widths and max(widths) <= 375, widths
        assert page.evaluate("getComputedStyle(document.querySelector('select')).display") == "block"
        assert page.input_value("#name") == "Ana Conceição"
        assert not failed, failed
    finally:
        page.close()
