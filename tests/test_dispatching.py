"""The dispatching functions every front end calls, on SQLite and PostgreSQL, with a real SMTP server."""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
from sqlalchemy import Engine, String, func, literal_column, select, text, update
from sqlalchemy.exc import IntegrityError

from mailout import dispatching, outbox
from mailout import subscribers as people
from mailout.config import Settings, load_settings
from mailout.db import make_engine, transaction, upgrade
from mailout.dispatching import DispatchExists, DispatchNotFound, DispatchState, Ending, NothingToResend
from mailout.issues import Issue, load_issue
from mailout.languages import choose
from mailout.mailer import AnotherSender
from mailout.models import Delivery, DeliveryStatus, Dispatch, DispatchVariant, Source, Subscriber
from mailout.render import render_variant
from mailout.segments import Segment
from mailout.tokens import Signer
from tests.conftest import EXAMPLE_ISSUE, SECRET_KEY, sending_config
from tests.smtpserver import SMTPServer
from tests.test_migrations import insert, rows


def setup(workspace: Path, engine: Engine, n: int) -> tuple[Settings, Issue]:
    """Subscribe p0..p{n-1} to members, and one who left; return the settings and the issue."""
    settings = load_settings(workspace)
    with transaction(engine) as session:
        members = people.ensure_list(session, settings.mailing_list("members"))
        for i in range(n):
            people.add(session, members, f"p{i}@example.org", name=f"Person {i}")
        gone, _ = people.add(session, members, "gone@example.org")
        people.unsubscribe(session, gone, Source.MANUAL, lst=members)
    return settings, load_issue(workspace / "issues" / "2019-01" / "issue.yaml")


def send(engine: Engine, settings: Settings, issue: Issue, **options: bool) -> dispatching.Result:
    """Plan, start and run a dispatch to members, as `mailout send --yes` does."""
    started = dispatching.start(
        engine, settings, dispatching.plan(engine, settings, issue, "members", **options)
    )
    return dispatching.run(engine, settings, started.dispatch_id, Signer.from_secret(settings.secret_key))


def test_a_plan_says_what_would_be_sent_and_writes_no_dispatch(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer
) -> None:
    settings, issue = setup(sending_workspace, engine, 3)
    plan = dispatching.plan(engine, settings, issue, "members")
    assert plan.resume is None and plan.previous is None
    assert plan.variant is not None and plan.variant.segment is Segment.MEMBER
    assert plan.variant.subject == "Efus Newsletter – January 2019"
    assert plan.recipients == 3, "who left the list is not counted"
    assert (plan.list_name, plan.list_description) == ("members", "Members")
    assert plan.sender == "Efus – Zoë's newsletter <newsletter@efus.example>"
    assert plan.transport == f"SMTP 127.0.0.1:{smtp_server.port} (plain)"
    assert plan.warnings == ()
    assert dispatching.overview(engine) == []
    plain = load_settings(sending_workspace, overrides={"newsletter.public_base_url": "http://news.example"})
    warned = dispatching.plan(engine, plain, issue, "members")
    assert len(warned.warnings) == 1 and "should be https" in warned.warnings[0]


def test_a_sent_issue_is_refused_unless_again(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer
) -> None:
    settings, issue = setup(sending_workspace, engine, 3)
    first = dispatching.start(engine, settings, dispatching.plan(engine, settings, issue, "members"))
    assert first.created and first.total == 3
    # Not sent yet: a second send takes it up rather than writing another.
    plan = dispatching.plan(engine, settings, issue, "members", again=True)
    assert plan.resume is not None and plan.resume.dispatch_id == first.dispatch_id
    result = dispatching.run(engine, settings, first.dispatch_id, Signer.from_secret(settings.secret_key))
    assert result.ending is Ending.FINISHED and result.report.counts["sent"] == 3
    with pytest.raises(DispatchExists, match="--again"):
        dispatching.plan(engine, settings, issue, "members")
    assert len(smtp_server.messages) == 3
    again = send(engine, settings, issue, again=True)
    assert again.report.id != first.dispatch_id and again.ending is Ending.FINISHED
    assert len(smtp_server.messages) == 6
    assert [s.id for s in dispatching.overview(engine)] == [again.report.id, first.dispatch_id]


def test_a_plan_overtaken_by_another_send_joins_its_dispatch(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer
) -> None:
    settings, issue = setup(sending_workspace, engine, 2)
    mine = dispatching.plan(engine, settings, issue, "members")
    theirs = dispatching.plan(engine, settings, issue, "members")
    written = dispatching.start(engine, settings, theirs)
    joined = dispatching.start(engine, settings, mine)
    assert (joined.dispatch_id, joined.created, joined.joined) == (written.dispatch_id, False, True)
    assert [s.id for s in dispatching.overview(engine)] == [written.dispatch_id], "one dispatch, not two"
    # Once theirs has finished, a plan made before it was written is refused, and says why.
    signer = Signer.from_secret(settings.secret_key)
    assert dispatching.run(engine, settings, written.dispatch_id, signer).ending is Ending.FINISHED
    with pytest.raises(DispatchExists, match=r"by another send since this one was planned \(dispatch 1,"):
        dispatching.start(engine, settings, mine)
    assert len(smtp_server.messages) == 2


def test_the_database_refuses_a_second_dispatch_of_one_generation(
    sending_workspace: Path, engine: Engine
) -> None:
    settings, issue = setup(sending_workspace, engine, 2)
    plan = dispatching.plan(engine, settings, issue, "members")
    assert plan.variant is not None
    first = dispatching.start(engine, settings, plan)

    def write(generation: int) -> int:
        with transaction(engine) as session:
            lst = people.ensure_list(session, settings.mailing_list("members"))
            return outbox.create_dispatch(
                session, issue.slug, lst, plan.variant, from_name="N", from_address="n@example.org",
                reply_to="", generation=generation,
            ).id  # fmt: skip

    # What two sends that both passed the check would write: the database refuses the second.
    with pytest.raises(IntegrityError) as refused:
        write(1)
    assert outbox.is_duplicate_dispatch(refused.value)
    assert [s.id for s in dispatching.overview(engine)] == [first.dispatch_id]
    # `--again` writes the next generation.
    second = write(2)
    assert [s.id for s in dispatching.overview(engine)] == [second, first.dispatch_id]


def test_a_paused_dispatch_is_resumed_and_its_pause_lifted(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer
) -> None:
    settings, issue = setup(sending_workspace, engine, 10)
    for i in range(10):
        smtp_server.answer(f"p{i}@example.org", 550, "5.7.1 SPF check failed", times=1)
    result = send(engine, settings, issue)
    assert result.ending is Ending.PAUSED and "SPF and DKIM" in result.report.paused_reason
    assert result.report.state is DispatchState.PAUSED
    plan = dispatching.plan(engine, settings, issue, "members")
    assert plan.resume is not None and plan.resume.paused_reason == result.report.paused_reason
    assert plan.variant is None, "a resumed dispatch sends what was frozen with it"
    started = dispatching.start(engine, settings, plan)
    assert not started.created and started.unpaused == result.report.paused_reason
    after = dispatching.report(engine, started.dispatch_id)
    assert after.state is DispatchState.UNFINISHED and after.paused_reason == ""
    smtp_server.rules.clear()
    done = dispatching.run(engine, settings, started.dispatch_id, Signer.from_secret(settings.secret_key))
    assert done.ending is Ending.FINISHED and done.report.state is DispatchState.FINISHED


def test_unknown_deliveries_are_sent_again_only_when_asked(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer
) -> None:
    settings, issue = setup(sending_workspace, engine, 3)
    first = send(engine, settings, issue)
    assert first.ending is Ending.FINISHED
    # As a process killed with p1's message on the wire leaves it (see outbox.recover).
    with transaction(engine) as session:
        session.execute(
            update(Delivery).where(Delivery.email == "p1@example.org").values(status=DeliveryStatus.UNKNOWN)
        )
    assert dispatching.report(engine, first.report.id).unknown == ["p1@example.org"]
    with pytest.raises(DispatchExists):
        dispatching.plan(engine, settings, issue, "members")
    plan = dispatching.plan(engine, settings, issue, "members", resend_unknown=True)
    assert plan.resume is not None and plan.resume.unknown == 1
    started = dispatching.start(engine, settings, plan)
    assert started.dispatch_id == first.report.id and started.requeued == 1
    assert dispatching.report(engine, started.dispatch_id).state is DispatchState.UNFINISHED
    assert [s.id for s in dispatching.unfinished(engine)] == [started.dispatch_id]
    done = dispatching.run(engine, settings, started.dispatch_id, Signer.from_secret(settings.secret_key))
    assert done.ending is Ending.FINISHED and done.report.unknown == []
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    assert received == {"p0@example.org": 1, "p1@example.org": 2, "p2@example.org": 1}


def test_the_report_adds_up(sending_workspace: Path, engine: Engine, smtp_server: SMTPServer) -> None:
    settings, issue = setup(sending_workspace, engine, 6)
    smtp_server.answer("p2@example.org", 550, "5.1.1 no such mailbox")
    smtp_server.answer("p3@example.org", 550, "5.1.1 no such mailbox")
    smtp_server.answer("p4@example.org", 554, "5.7.1 rejected by policy")
    result = send(engine, settings, issue)
    report = dispatching.report(engine, result.report.id)
    assert report == result.report
    assert report.total == sum(report.counts.values()) == 6
    assert report.done == 6 and report.refused == 1
    assert report.counts == {**{str(s): 0 for s in DeliveryStatus}, "sent": 3, "failed": 3}
    assert [(f.reply, f.count) for f in report.failures] == [
        ("550 5.1.1 no such mailbox", 2),
        ("554 5.7.1 rejected by policy", 1),
    ]
    assert (report.issue, report.list, report.segment) == ("2019-01", "members", "member")
    assert report.state is DispatchState.FINISHED and report.finished is not None
    assert report.finished >= report.created and report.seconds >= 0
    [summary] = dispatching.overview(engine)
    assert summary.counts == report.counts and summary.state is DispatchState.FINISHED
    assert dispatching.unfinished(engine) == []
    with pytest.raises(DispatchNotFound, match="no dispatch 999"):
        dispatching.report(engine, 999)


def test_a_run_that_leaves_the_last_messages_to_another_process_says_so(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer, database_url: str
) -> None:
    settings, issue = setup(sending_workspace, engine, 4)
    started = dispatching.start(engine, settings, dispatching.plan(engine, settings, issue, "members"))
    with engine.begin() as conn:  # another process, alive, has claimed one message
        outbox.register_worker(conn, started.dispatch_id, "other")
        assert len(outbox.claim(conn, started.dispatch_id, "other", 1)) == 1
    signer = Signer.from_secret(settings.secret_key)
    if database_url.startswith("sqlite"):
        with pytest.raises(AnotherSender):
            dispatching.run(engine, settings, started.dispatch_id, signer)
        return
    result = dispatching.run(engine, settings, started.dispatch_id, signer)
    assert result.ending is Ending.OTHERS
    assert result.report.counts["sent"] == 3 and result.report.counts["claimed"] == 1
    assert [s.id for s in dispatching.unfinished(engine, started.dispatch_id)] == [started.dispatch_id]


def test_retry_policy_queues_policy_refusals_only(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer
) -> None:
    settings, issue = setup(sending_workspace, engine, 5)
    with pytest.raises(NothingToResend, match="never sent to 'members'"):
        dispatching.plan(engine, settings, issue, "members", retry_policy=True)
    first = send(engine, settings, issue)
    with pytest.raises(NothingToResend, match=r"has no delivery refused by policy \(5\.7\.x\)"):
        dispatching.plan(engine, settings, issue, "members", retry_policy=True)
    failures = {
        "p0@example.org": "550 5.7.1 SPF check failed",
        "p1@example.org": "550 5.1.1 no such mailbox",
        "p2@example.org": "gave up after 3 attempts: 454 4.7.0 throttling",
        "p3@example.org": "554 5.7.26 unauthenticated: DMARC policy",
    }
    with transaction(engine) as session:
        for address, reply in failures.items():
            session.execute(
                update(Delivery)
                .where(Delivery.email == address)
                .values(status=DeliveryStatus.FAILED, reply=reply)
            )
    assert dispatching.report(engine, first.report.id).refused == 2
    plan = dispatching.plan(engine, settings, issue, "members", retry_policy=True)
    assert plan.resume is not None and plan.resume.refused == 2 and plan.resume.finished is not None
    started = dispatching.start(engine, settings, plan)
    assert started.retried == 2 and started.requeued == 0
    done = dispatching.run(engine, settings, started.dispatch_id, Signer.from_secret(settings.secret_key))
    assert done.ending is Ending.FINISHED
    assert done.report.counts["sent"] == 3 and done.report.counts["failed"] == 2
    assert done.report.done == done.report.total == 5
    received = collections.Counter(r.rcpt_tos[0] for r in smtp_server.messages)
    twice = {"p0@example.org", "p3@example.org"}
    assert received == {f"p{i}@example.org": 2 if f"p{i}@example.org" in twice else 1 for i in range(5)}


# --- every reader's language ---------------------------------------------------------

#: Readers and what they get of an issue in en (the default), fr and es: the exact language,
#: else its primary language, else the default.
READERS = {
    "en@example.org": ("en", "en"),
    "fr@example.org": ("FR", "fr"),
    "fr-be@example.org": ("fr_be", "fr"),
    "es-419@example.org": ("es-419", "es"),
    "pt@example.org": ("pt", "en"),
    "none@example.org": ("", "en"),
}


def multilingual(
    workspace: Path, engine: Engine, readers: dict[str, tuple[str, str]]
) -> tuple[Settings, Issue]:
    """Subscribe ``readers`` to members with their languages; return the settings and the issue in en, fr, es."""
    settings = load_settings(workspace)
    with transaction(engine) as session:
        members = people.ensure_list(session, settings.mailing_list("members"))
        for address, (language, _) in readers.items():
            people.add(session, members, address, name=address.split("@")[0].title(), language=language)
    # Written in three languages (the issue format of FORMAT's part; here its languages only).
    issue = dataclasses.replace(
        load_issue(workspace / "issues" / "2019-01" / "issue.yaml"), languages=("en", "fr", "es")
    )
    return settings, issue


def languages_received(smtp_server: SMTPServer) -> dict[str, str]:
    """Return each recipient's language, as their message says it: Content-Language and <html lang>."""
    found = {}
    for received in smtp_server.messages:
        message = received.message()
        html = next(p for p in message.iter_parts() if p.get_content_type() == "text/html").get_content()
        [lang] = re.findall(r'<html[^>]* lang="([^"]+)"', html)
        assert message["Content-Language"] == lang, received.rcpt_tos
        found[received.rcpt_tos[0]] = lang
    return found


def test_each_reader_gets_the_variant_of_their_language(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer
) -> None:
    settings, issue = multilingual(sending_workspace, engine, READERS)
    plan = dispatching.plan(engine, settings, issue, "members")
    assert list(plan.variants) == ["en", "fr", "es"], "each language rendered once, the default first"
    assert [v.language for v in plan.variants.values()] == ["en", "fr", "es"]
    assert plan.variant is plan.variants["en"]
    assert plan.by_language == {"en": 3, "fr": 2, "es": 1} and plan.recipients == 6
    started = dispatching.start(engine, settings, plan)
    with transaction(engine) as session:
        dispatch = session.get(Dispatch, started.dispatch_id)
        assert dispatch is not None and dispatch.language == "en"
        frozen = outbox.frozen_variants(session, dispatch)
        chosen = dict(session.execute(select(Delivery.email, Delivery.language)).all())
    assert list(frozen) == ["en", "es", "fr"], "the default first"
    assert {lang: v.html for lang, v in frozen.items()} == {lang: v.html for lang, v in plan.variants.items()}
    assert chosen == {address: wanted for address, (_, wanted) in READERS.items()}
    result = dispatching.run(engine, settings, started.dispatch_id, Signer.from_secret(settings.secret_key))
    assert result.ending is Ending.FINISHED and result.report.counts["sent"] == 6
    assert result.report.languages == {"en": 3, "es": 1, "fr": 2}
    assert languages_received(smtp_server) == chosen
    assert len(smtp_server.messages) == 6


def test_the_choice_frozen_with_a_dispatch_holds_whatever_changes_before_the_send(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer
) -> None:
    settings, issue = multilingual(sending_workspace, engine, READERS)
    started = dispatching.start(engine, settings, dispatching.plan(engine, settings, issue, "members"))
    # After the dispatch was written: two readers change their language, one joins, and the
    # issue gains German (a translation finished late).
    with transaction(engine) as session:
        members = people.ensure_list(session, settings.mailing_list("members"))
        people.add(session, members, "late@example.org", language="fr")
        for address, language in (("fr@example.org", "es"), ("pt@example.org", "fr")):
            session.execute(update(Subscriber).where(Subscriber.email == address).values(language=language))
    later = dataclasses.replace(issue, languages=("en", "fr", "es", "de"))
    plan = dispatching.plan(engine, settings, later, "members")
    assert plan.resume is not None and plan.resume.dispatch_id == started.dispatch_id
    assert plan.variants == {}, "nothing rendered: the frozen variants are sent"
    assert dispatching.start(engine, settings, plan).dispatch_id == started.dispatch_id
    result = dispatching.run(engine, settings, started.dispatch_id, Signer.from_secret(settings.secret_key))
    assert result.ending is Ending.FINISHED
    assert languages_received(smtp_server) == {address: wanted for address, (_, wanted) in READERS.items()}
    with transaction(engine) as session:
        dispatch = session.get(Dispatch, started.dispatch_id)
        assert dispatch is not None and list(outbox.frozen_variants(session, dispatch)) == ["en", "es", "fr"]


def test_an_issue_in_one_language_is_sent_as_before_with_its_language_said(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer
) -> None:
    settings, issue = multilingual(sending_workspace, engine, READERS)
    single = dataclasses.replace(issue, languages=())
    plan = dispatching.plan(engine, settings, single, "members")
    assert list(plan.variants) == ["en"] and plan.by_language == {"en": 6}
    result = send_plan(engine, settings, plan)
    assert result.report.languages == {"en": 6}
    assert set(languages_received(smtp_server).values()) == {"en"}
    with transaction(engine) as session:
        assert session.scalar(select(func.count()).select_from(DispatchVariant)) == 0


def send_plan(engine: Engine, settings: Settings, plan: dispatching.Plan) -> dispatching.Result:
    started = dispatching.start(engine, settings, plan)
    return dispatching.run(engine, settings, started.dispatch_id, Signer.from_secret(settings.secret_key))


def test_the_choice_in_sql_is_the_rule_of_languages_choose(engine: Engine) -> None:
    """Every stored form against several sets of languages: the SQL and Python agree."""
    stored = ["", "en", "fr", "fr-BE", "fr-CA", "FR", "fr-be", "es", "es-419", "de-CH", "pt-BR", "zh-Hant-TW"]
    offers = [
        ("en", "fr", "es"),
        ("en", "fr-BE"),
        ("fr", "fr-BE", "en"),
        ("de",),
        ("zh", "en"),
        ("en", "pt-BR"),
    ]
    column = literal_column("v.tag", String)
    values = " UNION ALL ".join(f"SELECT '{tag}' AS tag" for tag in stored)
    with engine.connect() as conn:
        for available in offers:
            choice = outbox.language_choice(column, available, available[0])
            query = select(literal_column("v.tag"), choice).select_from(text(f"({values}) AS v"))
            found = dict(conn.execute(query).all())
            assert found == {tag: choose(tag, available, available[0]) for tag in stored}, available


def test_a_dispatch_written_before_the_upgrade_is_resumed_after_it_unchanged(
    workspace: Path, empty_database_url: str, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workspace / "mailout.toml").write_text(sending_config(smtp_server.port), encoding="utf-8")
    shutil.copytree(EXAMPLE_ISSUE.parent, workspace / "issues" / "2019-01")
    monkeypatch.setenv("MAILOUT_DATABASE_URL", empty_database_url)
    monkeypatch.setenv("MAILOUT_SECRET_KEY", SECRET_KEY)
    settings = load_settings(workspace)
    upgrade(empty_database_url, "0009")
    # What mailout before 0010 froze: one variant, and three deliveries, one sent already.
    variant = render_variant(load_issue(EXAMPLE_ISSUE), settings, Segment.MEMBER)
    data = rows()
    readers = [("sent@example.org", "fr"), ("fr-be@example.org", "fr-be"), ("none@example.org", "")]
    subscribers = [
        {
            **data["subscribers"][0],
            "id": n,
            "email": e,
            "email_key": e,
            "language": lang,
            "status": "subscribed",
        }
        for n, (e, lang) in enumerate(readers, start=1)
    ]
    dispatch = {
        **data["dispatches"][0],
        "list_id": 1,
        "subject": "Frozen before the upgrade — Efus",
        "html": variant.html,
        "text": variant.text,
        "tokens": json.dumps(dict(variant.tokens)),
        "greeting_fallback": variant.greeting_fallback,
        "from_name": settings.sender.name,
        "from_address": settings.sender.address,
        "total": 3,
        "paused_reason": "",
        "finished_at": None,
    }
    deliveries = [
        {
            **data["deliveries"][0],
            "id": n,
            "dispatch_id": 1,
            "subscriber_id": n,
            "email": e,
            "status": "sent" if n == 1 else "queued",
            "worker": "",
            "attempts": 1 if n == 1 else 0,
            "next_attempt_at": None,
            "reply": "250 ok" if n == 1 else "",
        }
        for n, (e, _) in enumerate(readers, start=1)
    ]
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            insert(connection, "lists", [{**data["lists"][0], "description": "Members"}])
            insert(connection, "subscribers", subscribers)
            insert(
                connection,
                "subscriptions",
                [{**data["subscriptions"][0], "id": n, "subscriber_id": n, "list_id": 1, "status": "subscribed"}
                 for n in (1, 2, 3)],
            )  # fmt: skip
            insert(connection, "dispatches", [dispatch])
            insert(connection, "deliveries", deliveries)
        upgrade(empty_database_url)
        # Taken up by a send of the issue as it is now, in two languages: what was frozen goes out.
        issue = dataclasses.replace(load_issue(EXAMPLE_ISSUE), languages=("en", "fr"))
        plan = dispatching.plan(engine, settings, issue, "members")
        assert plan.resume is not None and plan.resume.dispatch_id == 1 and plan.variants == {}
        result = send_plan(engine, settings, plan)
        assert result.ending is Ending.FINISHED and result.report.counts["sent"] == 3
        assert result.report.languages == {"": 3}, "no language was chosen for them"
        with transaction(engine) as session:
            old = session.get(Dispatch, 1)
            assert old is not None and old.language is None
            assert list(outbox.frozen_variants(session, old)) == [""]
    finally:
        engine.dispose()
    assert sorted(r.rcpt_tos[0] for r in smtp_server.messages) == ["fr-be@example.org", "none@example.org"]
    for received in smtp_server.messages:
        message = received.message()
        assert message["Subject"] == "Frozen before the upgrade — Efus"
        assert message["Content-Language"] is None, "its language was not recorded: not said"
        html = next(p for p in message.iter_parts() if p.get_content_type() == "text/html").get_content()
        # The frozen HTML, filled in for the reader.
        piece = max(variant.html_slots.pieces, key=len)
        assert piece.replace("\r\n", "\n") in html.replace("\r\n", "\n")
