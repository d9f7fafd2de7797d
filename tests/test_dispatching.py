"""The dispatching functions every front end calls, on SQLite and PostgreSQL, with a real SMTP server."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError

from mailout import dispatching, outbox
from mailout import subscribers as people
from mailout.config import Settings, load_settings
from mailout.db import transaction
from mailout.dispatching import DispatchExists, DispatchNotFound, DispatchState, Ending, NothingToResend
from mailout.issues import Issue, load_issue
from mailout.mailer import AnotherSender
from mailout.models import Delivery, DeliveryStatus, Source
from mailout.segments import Segment
from mailout.tokens import Signer
from tests.smtpserver import SMTPServer


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
