"""Sign-ups with double opt-in: the request, the claim of the hour, confirmation, purge, the message.

On a real SQLite file and a real PostgreSQL database, with the real SMTP server on loopback.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import multiprocessing
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from mailout import confirmmail, privacy, signup, subscribers
from mailout.cli import cli
from mailout.config import Settings, load_settings
from mailout.db import make_engine, transaction
from mailout.importer import import_file
from mailout.models import (
    ConsentEvent,
    ConsentText,
    Erasure,
    EventKind,
    MailingList,
    Source,
    Subscriber,
    SubscriberStatus,
    Subscription,
)
from mailout.tokens import Purpose, Signer
from tests.conftest import edit_config
from tests.dnsserver import DNSServer
from tests.smtpserver import SMTPServer
from tests.test_dkim import verifies

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
ADDRESS = "Zoe.Martin@Example.org"
PAGE = "/subscribe/public"


@pytest.fixture
def ws(sending_workspace: Path) -> Path:
    """The sending workspace, its public list and a second one ("events") open to sign-up."""
    edit_config(
        sending_workspace,
        (
            '[lists.public]\nsegment = "public"\ndescription = "Public"\n',
            '[lists.public]\nsegment = "public"\ndescription = "Public"\npublic_signup = true\n\n'
            '[lists.events]\nsegment = "public"\ndescription = "Events"\npublic_signup = true\n',
        ),
    )
    return sending_workspace


@pytest.fixture
def settings(ws: Path) -> Settings:
    return load_settings(ws)


@pytest.fixture
def signer(settings: Settings) -> Signer:
    return Signer.from_secret(settings.secret_key)


@pytest.fixture
def db(database_url: str, ws: Path) -> Engine:
    engine = make_engine(database_url)
    yield engine  # type: ignore[misc]
    engine.dispose()


def form(
    settings: Settings, address: str = ADDRESS, lists: tuple[str, ...] = ("public",), **changes: object
) -> signup.SignupRequest:
    values: dict[str, object] = {
        "address": address,
        "name": "Zoé",
        "language": "fr",
        "lists": lists,
        "page": PAGE,
        "consent_text": signup.consent_text(settings, "fr"),
        "consent_language": "fr",
        "ip": None,
    }
    values.update(changes)
    return signup.SignupRequest(**values)  # type: ignore[arg-type]


def ask(
    db: Engine, settings: Settings, signer: Signer, at: dt.datetime = T0, **kwargs: object
) -> signup.Confirmation | None:
    with db.begin() as conn:
        return signup.request(conn, settings, signer, form(settings, **kwargs), now=at)  # type: ignore[arg-type]


def confirm(
    db: Engine, settings: Settings, signer: Signer, c: signup.Confirmation, at: dt.datetime
) -> signup.Confirmed | None:
    with db.begin() as conn:
        return signup.confirm(conn, settings, signer, c.signup_id, c.nonce, now=at)


def rows(db: Engine) -> list[dict[str, object]]:
    with db.begin() as conn:
        return signup.of_person(conn, ADDRESS.lower())


def events(db: Engine) -> list[ConsentEvent]:
    with transaction(db) as session:
        return list(session.scalars(select(ConsentEvent).order_by(ConsentEvent.id)))


def person(db: Engine, address: str = ADDRESS) -> Subscriber | None:
    with transaction(db) as session:
        return session.scalars(
            select(Subscriber).where(Subscriber.email_key == address.lower())
        ).one_or_none()


def lists_of(db: Engine, address: str = ADDRESS) -> dict[str, str]:
    with transaction(db) as session:
        found = session.execute(
            select(MailingList.name, Subscription.status)
            .join(Subscription, Subscription.list_id == MailingList.id)
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(Subscriber.email_key == address.lower())
        )
        return {name: str(status) for name, status in found}


def add_subscriber(db: Engine, settings: Settings, list_name: str, address: str = ADDRESS) -> int:
    lst = next(lst for lst in settings.lists if lst.name == list_name)
    with transaction(db) as session:
        row = subscribers.ensure_list(session, lst)
        found, _ = subscribers.add(session, row, address)
        return found.id


# --- the request and the claim of the hour ---------------------------------------------------


def test_a_request_gives_one_confirmation_and_keeps_the_sign_up_not_a_subscriber(
    db: Engine, settings: Settings, signer: Signer
) -> None:
    c = ask(db, settings, signer)
    assert c is not None
    assert (c.address, c.name, c.language, c.lists) == ("Zoe.Martin@example.org", "Zoé", "fr", ("public",))
    assert 0 <= c.nonce < 10**18
    [row] = rows(db)
    assert row["sent_at"] == T0 and row["created_at"] == T0 and row["sends"] == 1 and row["reply"] == ""
    assert row["lists"] == ["public"] and row["page"] == PAGE and row["ip"] is None
    assert "nonce" not in row  # an export does not show the secret of the link
    assert person(db) is None, "a sign-up is not a subscriber"
    with transaction(db) as session:
        kept = session.get(ConsentText, row["consent_sha256"])
        assert kept is not None and kept.text == signup.consent_text(settings, "fr") and kept.language == "fr"


def test_at_most_one_message_an_hour_and_a_new_one_replaces_the_older_link(
    db: Engine, settings: Settings, signer: Signer
) -> None:
    first = ask(db, settings, signer)
    assert first is not None
    assert ask(db, settings, signer, T0 + dt.timedelta(minutes=59, seconds=59)) is None
    assert ask(db, settings, signer, T0 + dt.timedelta(hours=1)) is None  # the hour is not over yet
    # Within the hour nothing changes: what the first link confirms stays what its message said.
    assert ask(db, settings, signer, T0 + dt.timedelta(minutes=30), lists=("events",)) is None
    assert rows(db)[0]["lists"] == ["public"]
    later = T0 + dt.timedelta(hours=1, seconds=1)
    second = ask(db, settings, signer, later, lists=("public", "events"))
    assert second is not None and second.signup_id == first.signup_id and second.nonce != first.nonce
    assert rows(db)[0]["sends"] == 2 and rows(db)[0]["created_at"] == later
    with db.begin() as conn:
        assert signup.look(conn, settings, first.signup_id, first.nonce, now=later) is None  # replaced
        pending = signup.look(conn, settings, second.signup_id, second.nonce, now=later)
    assert pending is not None and pending.lists == ("public", "events")
    assert confirm(db, settings, signer, first, later) is None
    assert person(db) is None


def test_two_threads_at_once_give_at_most_one_confirmation(
    db: Engine, settings: Settings, signer: Signer
) -> None:
    barrier = threading.Barrier(8)
    results: list[signup.Confirmation | None] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            barrier.wait()
            results.append(ask(db, settings, signer))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 8 and sum(r is not None for r in results) == 1
    assert rows(db)[0]["sends"] == 1


def _request_in_a_process(ws: str, url: str, start: float) -> bool:
    import time

    os.environ["MAILOUT_DATABASE_URL"] = url
    settings = load_settings(Path(ws))
    engine = make_engine(url)
    time.sleep(max(0.0, start - time.time()))
    try:
        return ask(engine, settings, Signer.from_secret(settings.secret_key)) is not None
    finally:
        engine.dispose()


def test_two_processes_at_once_give_at_most_one_confirmation(db: Engine, ws: Path, database_url: str) -> None:
    import time

    context = multiprocessing.get_context("spawn")
    start = time.time() + 3  # every process started and ready: then all at once
    with context.Pool(4) as pool:
        sent = pool.starmap(_request_in_a_process, [(str(ws), database_url, start)] * 4)
    assert sorted(sent) == [False, False, False, True]
    assert rows(db)[0]["sends"] == 1


def test_no_message_to_a_bounced_an_erased_or_an_already_subscribed_address(
    db: Engine, settings: Settings, signer: Signer
) -> None:
    add_subscriber(db, settings, "public")
    assert ask(db, settings, signer) is None, "on every list asked already"
    assert rows(db) == [], "nothing to wait for"
    # On one of the two lists asked: a message, for both.
    both = ask(db, settings, signer, lists=("public", "events"))
    assert both is not None and both.lists == ("public", "events")

    bounced = "gone@example.org"
    subscriber_id = add_subscriber(db, settings, "public", bounced)
    with db.begin() as conn:
        assert subscribers.mark_bounced(conn, subscriber_id, "550 5.1.1 no such user")
    assert ask(db, settings, signer, address=bounced, lists=("events",)) is None
    with db.begin() as conn:
        assert signup.of_person(conn, bounced) == []

    erased = "Erased.Person@example.org"
    with transaction(db) as session:
        session.add(Erasure(address_hash=signer.address_hashes(erased)[0], erased_by="test"))
    assert ask(db, settings, signer, address=erased.upper()) is None
    with db.begin() as conn:
        assert signup.of_person(conn, erased.lower()) == [], "an erased address is never written again"


def test_the_request_refuses_what_the_form_never_offers(
    db: Engine, settings: Settings, signer: Signer
) -> None:
    for lists in [("members",), ("nope",), ()]:
        with pytest.raises(subscribers.InvalidSubscriber):
            ask(db, settings, signer, lists=lists)
    with pytest.raises(subscribers.InvalidSubscriber, match="address"):
        ask(db, settings, signer, address="not an address")
    assert rows(db) == []


# --- confirmation -----------------------------------------------------------------------


@pytest.mark.parametrize("store_ip", [False, True])
def test_confirming_subscribes_with_the_proof_of_consent(
    db: Engine, ws: Path, signer: Signer, store_ip: bool
) -> None:
    if store_ip:
        with (ws / "mailout.toml").open("a", encoding="utf-8") as config:
            config.write("\n[signup]\nstore_ip = true\n")
    settings = load_settings(ws)
    c = ask(db, settings, signer, lists=("public", "events"), ip="192.0.2.7")
    assert c is not None
    at = T0 + dt.timedelta(days=2)
    done = confirm(db, settings, signer, c, at)
    assert done == signup.Confirmed(("public", "events"), "fr")
    found = person(db)
    assert found is not None and found.status is SubscriberStatus.SUBSCRIBED
    assert (found.email, found.name, found.language) == ("Zoe.Martin@example.org", "Zoé", "fr")
    assert lists_of(db) == {"public": "subscribed", "events": "subscribed"}
    consent = subscribers.consent_sha256(signup.consent_text(settings, "fr"))
    got = events(db)
    assert len(got) == 2
    for event in got:
        assert event.kind is EventKind.SUBSCRIBED and event.source is Source.SIGNUP
        assert event.subscriber_id == found.id
        assert event.requested_at is not None and event.requested_at.replace(tzinfo=dt.UTC) == T0
        assert event.created_at.replace(tzinfo=dt.UTC) == at
        assert event.page == PAGE and event.consent_sha256 == consent
        assert event.ip == ("192.0.2.7" if store_ip else None)
    assert rows(db) == [], "a confirmed sign-up is deleted: its facts are in the events"


def test_the_same_link_twice_and_two_confirmations_at_once_subscribe_once(
    db: Engine, settings: Settings, signer: Signer
) -> None:
    c = ask(db, settings, signer)
    assert c is not None
    barrier = threading.Barrier(4)
    outcomes: list[signup.Confirmed | None] = []

    def one() -> None:
        barrier.wait()
        outcomes.append(confirm(db, settings, signer, c, T0 + dt.timedelta(minutes=3)))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(o is not None for o in outcomes) == 1
    assert confirm(db, settings, signer, c, T0 + dt.timedelta(minutes=4)) is None
    assert len(events(db)) == 1


def test_a_link_works_for_confirm_days_after_its_message_and_no_longer(
    db: Engine, settings: Settings, signer: Signer
) -> None:
    c = ask(db, settings, signer)
    assert c is not None
    end = T0 + dt.timedelta(days=settings.signup.confirm_days)
    with db.begin() as conn:
        assert signup.look(conn, settings, c.signup_id, c.nonce, now=end) is not None
        assert signup.look(conn, settings, c.signup_id, c.nonce, now=end + dt.timedelta(seconds=1)) is None
        assert signup.look(conn, settings, c.signup_id, c.nonce + 1, now=T0) is None
        assert signup.look(conn, settings, c.signup_id + 1, c.nonce, now=T0) is None
    assert confirm(db, settings, signer, c, end + dt.timedelta(seconds=1)) is None
    assert person(db) is None
    assert confirm(db, settings, signer, c, end) is not None


def test_someone_who_left_comes_back_by_confirming_and_an_import_still_does_not_bring_them_back(
    db: Engine, ws: Path, settings: Settings, signer: Signer
) -> None:
    subscriber_id = add_subscriber(db, settings, "public")
    with transaction(db) as session:
        found = session.get(Subscriber, subscriber_id)
        assert found is not None
        subscribers.unsubscribe(session, found, Source.LINK)
    c = ask(db, settings, signer)
    assert c is not None, "an unsubscribed person does get a message: confirming is their new consent"
    assert confirm(db, settings, signer, c, T0 + dt.timedelta(hours=3)) is not None
    found = person(db)
    assert found is not None and found.status is SubscriberStatus.SUBSCRIBED
    assert lists_of(db) == {"public": "subscribed"}
    assert [(e.kind, e.source) for e in events(db)][-1] == (EventKind.RESUBSCRIBED, Source.SIGNUP)

    # They leave again; a list naming them does not bring them back.
    with transaction(db) as session:
        again = session.get(Subscriber, subscriber_id)
        assert again is not None
        subscribers.unsubscribe(session, again, Source.LINK)
    csv = ws / "subscribers" / "public.csv"
    csv.write_text(f"email,name\n{ADDRESS},Zoé\nnew@example.org,New\n", encoding="utf-8")
    public = next(lst for lst in settings.lists if lst.name == "public")
    report = import_file(db, csv, public)
    assert report.added == 1 and report.kept_out == 1
    assert lists_of(db) == {"public": "unsubscribed"}


def test_a_bounce_between_the_request_and_the_confirmation_refuses_it(
    db: Engine, settings: Settings, signer: Signer
) -> None:
    subscriber_id = add_subscriber(db, settings, "events")
    c = ask(db, settings, signer)
    assert c is not None
    with db.begin() as conn:
        subscribers.mark_bounced(conn, subscriber_id, "550 5.1.1")
    assert confirm(db, settings, signer, c, T0 + dt.timedelta(minutes=5)) is None
    assert lists_of(db) == {"events": "unsubscribed"}
    assert rows(db) == []


# --- purge and forget ---------------------------------------------------------------------


def test_purge_deletes_only_the_sign_ups_older_than_pending_days(
    db: Engine, settings: Settings, signer: Signer
) -> None:
    days = dt.timedelta(days=settings.signup.pending_days)
    assert ask(db, settings, signer, T0) is not None
    assert ask(db, settings, signer, T0 + dt.timedelta(days=1), address="young@example.org") is not None
    with db.begin() as conn:
        assert signup.purge_pending(conn, settings, now=T0 + days) == 0
        assert signup.purge_pending(conn, settings, now=T0 + days + dt.timedelta(seconds=1)) == 1
        assert signup.of_person(conn, ADDRESS.lower()) == []
        assert len(signup.of_person(conn, "young@example.org")) == 1
        assert signup.forget(conn, "YOUNG@example.org") == 1
        assert signup.of_person(conn, "young@example.org") == []


def test_purge_keeps_a_sign_up_whose_link_still_works(db: Engine, settings: Settings, signer: Signer) -> None:
    # A team gives links 40 days and keeps pending sign-ups 30: a link followed on day 35
    # must still find its sign-up.
    longer = dataclasses.replace(settings, signup=dataclasses.replace(settings.signup, confirm_days=40.0))
    c = ask(db, longer, signer, T0)
    assert c is not None
    day35 = T0 + dt.timedelta(days=35)
    with db.begin() as conn:
        assert signup.purge_pending(conn, longer, now=day35) == 0
    assert confirm(db, longer, signer, c, day35) is not None
    assert ask(db, longer, signer, T0, address="late@example.org") is not None
    with db.begin() as conn:
        assert signup.purge_pending(conn, longer, now=T0 + dt.timedelta(days=40, seconds=1)) == 1


def test_purge_pending_command_and_the_worker(
    ws: Path, db: Engine, settings: Settings, signer: Signer
) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=settings.signup.pending_days + 1)
    assert ask(db, settings, signer, old) is not None
    assert ask(db, settings, signer, old, address="other@example.org") is not None
    runner = CliRunner()
    result = runner.invoke(cli, ["subscribers", "purge-pending"], catch_exceptions=False)
    assert result.exit_code == 0 and result.output == "2 pending sign-ups deleted\n"
    assert ask(db, settings, signer, old, address="third@example.org") is not None
    result = runner.invoke(cli, ["worker"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "1 pending sign-ups deleted" in result.output
    with db.begin() as conn:
        assert signup.of_person(conn, "third@example.org") == []


# --- the message --------------------------------------------------------------------------


def _link(received_text: str) -> str:
    match = re.search(r"https://news\.example/subscribe/confirm/\S+", received_text)
    assert match, received_text
    return match.group(0)


def send_queued(settings: Settings, db: Engine, signer: Signer, c: signup.Confirmation) -> None:
    """Send ``c`` through a confirmation queue of its own, as the web app does; wait for it."""
    queue = confirmmail.ConfirmationQueue(settings, db, signer)
    try:
        assert queue.submit(c)
        assert queue.join(10)
    finally:
        queue.close()


def test_the_confirmation_arrives_in_french_and_its_link_confirms(
    db: Engine, settings: Settings, signer: Signer, smtp_server: SMTPServer
) -> None:
    c = ask(db, settings, signer, lists=("public", "events"))
    assert c is not None
    send_queued(settings, db, signer, c)
    [received] = smtp_server.wait_for(1)
    assert received.mail_from == "newsletter@efus.example" and received.rcpt_tos == ["Zoe.Martin@example.org"]
    message = received.message()
    assert message["Subject"] == "Veuillez confirmer votre inscription à Efus Newsletter"
    # The address alone: the name is a stranger's free text until the person confirms.
    assert message["To"] == "Zoe.Martin@example.org"
    assert message["Content-Language"] == "fr" and message["Auto-Submitted"] == "auto-generated"
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Listes : Public, Events" in text and "Le lien fonctionne pendant 7 jours." in text
    assert "vous ne serez pas inscrit" in text and "Efus Newsletter" in text
    assert 'lang="fr"' in html and "Confirmer mon inscription" in html
    link = _link(text)
    assert link in html
    parts = urlsplit(link)
    assert parts.query == "lang=fr"
    claim = signer.verify(Purpose.CONFIRM, parts.path.rsplit("/", 1)[1])
    assert claim is not None and (claim.subscriber_id, claim.list_id) == (c.signup_id, c.nonce)
    [row] = rows(db)
    assert row["reply"].startswith("250")  # type: ignore[union-attr]
    assert confirm(db, settings, signer, c, T0 + dt.timedelta(minutes=2)) is not None
    assert lists_of(db) == {"public": "subscribed", "events": "subscribed"}


def test_with_dkim_the_confirmation_verifies(
    db: Engine,
    ws: Path,
    signer: Signer,
    smtp_server: SMTPServer,
    dns_server: DNSServer,
    rsa_pem: bytes,
) -> None:
    (ws / "dkim.pem").write_bytes(rsa_pem)
    with (ws / "mailout.toml").open("a", encoding="utf-8") as config:
        config.write('\n[dkim]\ndomain = "efus.example"\nselector = "mo2026"\nkey_file = "dkim.pem"\n')
    settings = load_settings(ws)
    from mailout.dkim import load_signer

    dkim = load_signer(settings)
    assert dkim is not None
    dns_server.add_txt(dkim.keys[0].record_name, dkim.keys[0].record())
    c = ask(db, settings, signer)
    assert c is not None
    assert confirmmail.send_confirmation(settings, signer, c).startswith("250")
    [received] = smtp_server.wait_for(1)
    assert received.raw.startswith(b"DKIM-Signature:")
    assert verifies(received.raw, dns_server)
    assert not verifies(received.raw.replace(b"Le lien", b"Ce lien"), dns_server)


def test_an_smtp_refusal_is_recorded_never_raised(
    db: Engine, settings: Settings, signer: Signer, smtp_server: SMTPServer
) -> None:
    smtp_server.answer("Zoe.Martin@example.org", 550, "5.1.1 no such mailbox")
    c = ask(db, settings, signer)
    assert c is not None
    send_queued(settings, db, signer, c)
    [row] = rows(db)
    assert row["reply"] == "failed: 550 5.1.1 no such mailbox"
    assert smtp_server.messages == []
    # The claim stays: no second attempt within the hour, whatever the form receives.
    assert ask(db, settings, signer, T0 + dt.timedelta(minutes=10)) is None


def test_a_message_still_queued_when_its_address_is_erased_is_not_sent(
    db: Engine, settings: Settings, signer: Signer, smtp_server: SMTPServer
) -> None:
    c = ask(db, settings, signer)
    assert c is not None
    privacy.erase(db, signer, c.address, by="dpo")  # while the message waits in the queue
    send_queued(settings, db, signer, c)
    assert smtp_server.messages == [] and rows(db) == []


def test_a_temporary_refusal_gives_the_hour_back(
    db: Engine, settings: Settings, signer: Signer, smtp_server: SMTPServer
) -> None:
    # A 4xx: the message did not go. The person's next try (here ten minutes later) must
    # send at once rather than wait for the hour a message that never left had claimed.
    smtp_server.answer("Zoe.Martin@example.org", 451, "4.3.0 try again later", times=1)
    c = ask(db, settings, signer)
    assert c is not None
    send_queued(settings, db, signer, c)
    [row] = rows(db)
    assert row["reply"] == "failed: 451 4.3.0 try again later" and row["sent_at"] is None
    assert smtp_server.messages == []
    with db.connect() as conn:  # the link of the message that never left is not valid
        assert signup.look(conn, settings, c.signup_id, c.nonce, now=T0) is None
    again = ask(db, settings, signer, T0 + dt.timedelta(minutes=10))
    assert again is not None and again.nonce != c.nonce
    send_queued(settings, db, signer, again)
    [received] = smtp_server.wait_for(1)
    assert received.rcpt_tos == ["Zoe.Martin@example.org"]
    [row] = rows(db)
    assert str(row["reply"]).startswith("250")


def test_a_slow_relay_holds_up_no_recording_and_a_full_queue_gives_the_hour_back(
    db: Engine, settings: Settings, signer: Signer, smtp_server: SMTPServer
) -> None:
    queue = confirmmail.ConfirmationQueue(settings, db, signer, maxsize=1)
    sending, held = threading.Event(), threading.Event()
    original = queue._send_one

    def slow(item: signup.Confirmation) -> None:
        sending.set()
        held.wait(10)  # the relay takes its time
        original(item)

    queue._send_one = slow  # type: ignore[method-assign]
    people = [f"person{n}@example.org" for n in range(3)]
    try:
        assert queue.submit_request(form(settings, people[0]), T0)
        assert sending.wait(10)  # the first message is on its way, and stuck there
        assert queue.submit_request(form(settings, people[1]), T0)  # waits to be sent
        # Recorded at once all the same: the relay holds up sending only.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _signup_of(db, people[1]):
            time.sleep(0.05)
        assert _signup_of(db, people[1])
        # One more than the sender's queue holds: dropped, said in its reply, the hour given back.
        assert queue.submit_request(form(settings, people[2]), T0)
        while time.monotonic() < deadline and not _signup_of(db, people[2]).get("reply"):
            time.sleep(0.05)
        dropped = _signup_of(db, people[2])
        assert str(dropped["reply"]).startswith("dropped") and dropped["sent_at"] is None
        held.set()
        assert queue.join(10)
    finally:
        queue.close()
    assert sorted(address for r in smtp_server.messages for address in r.rcpt_tos) == people[:2]


def _signup_of(db: Engine, address: str) -> dict[str, object]:
    with db.begin() as conn:
        found = signup.of_person(conn, address)
    return found[0] if found else {}


def test_a_crash_between_the_claim_and_the_send_costs_the_person_one_hour(
    db: Engine, settings: Settings, signer: Signer
) -> None:
    """The claim is committed, then the process dies before the message leaves.

    What the person experiences: the page said "check your mailbox", and no message
    comes. Sending the form again within the hour changes nothing (the hour is
    claimed); after it, a new message goes out. The row shows it: ``reply`` empty.
    """
    lost = ask(db, settings, signer)
    assert lost is not None  # ... and never sent
    [row] = rows(db)
    assert row["reply"] == "" and row["sent_at"] == T0
    assert ask(db, settings, signer, T0 + dt.timedelta(minutes=20)) is None
    again = ask(db, settings, signer, T0 + dt.timedelta(hours=1, minutes=1))
    assert again is not None and again.nonce != lost.nonce


# --- the words ----------------------------------------------------------------------------


def test_consent_text_per_language(ws: Path) -> None:
    settings = load_settings(ws)
    assert signup.consent_text(settings, "en") == signup.DEFAULT_CONSENT
    assert signup.consent_text(settings, "fr").startswith("Je veux recevoir")
    with (ws / "mailout.toml").open("a", encoding="utf-8") as config:
        config.write('\n[signup]\nconsent = "Yes, send it."\n')
    with (ws / "mailout.toml").open("a", encoding="utf-8") as config:
        config.write('\n[newsletter.translations.fr]\nsignup_consent = "Oui, envoyez-la."\n')
    settings = load_settings(ws)
    assert signup.consent_text(settings, "fr-CA") == "Oui, envoyez-la."
    assert signup.consent_text(settings, "de") == "Yes, send it."


def test_validity_in_days_or_hours(ws: Path) -> None:
    with (ws / "mailout.toml").open("a", encoding="utf-8") as config:
        config.write("\n[signup]\nconfirm_days = 1\n")
    assert confirmmail.validity(load_settings(ws), "fr") == "1 jour"
    edit_config(ws, ("confirm_days = 1\n", "confirm_days = 0.5\n"))
    assert confirmmail.validity(load_settings(ws), "de") == "12 Stunden"


# --- the snippet --------------------------------------------------------------------------


def test_signup_form_prints_a_plain_form_with_the_fields_the_web_app_reads(ws: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["signup-form", "--language", "FR", "--page", "https://efus.example/a?b=1&c=2"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    html = result.output
    assert '<form method="post" action="https://news.example/subscribe?lang=fr"' in html
    names = set(re.findall(r'name="([a-z_]+)"', html))
    assert names == {"email", "name", "language", "lists", "website", "page"}
    assert "form_token" not in html
    assert re.findall(r'name="lists" value="([a-z]+)"', html) == ["public", "events"]
    assert 'value="https://efus.example/a?b=1&amp;c=2"' in html
    assert "<script" not in html.lower() and "src=" not in html and "http://" not in html
    assert re.search(
        r'style="[^"]*left: -10000px[^"]*"[^>]*><label>[^<]*<input type="text" name="website" value=""', html
    )
    one = runner.invoke(cli, ["signup-form", "--list", "events"], catch_exceptions=False)
    assert 'action="https://news.example/subscribe/events"' in one.output
    assert '<input type="hidden" name="lists" value="events">' in one.output
    refused = runner.invoke(cli, ["signup-form", "--list", "members"])
    assert refused.exit_code == 1 and "not a list open to sign-up" in refused.output
