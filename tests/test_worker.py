"""`mailout worker` reading the bounce mailbox: once after the dispatches, or on schedule with --watch.

The reports are about real deliveries of a dispatch sent through the loopback SMTP
server (tests/test_bounces.py writes them), in a real Maildir; the database is a
SQLite file and PostgreSQL. The --watch loop runs in a process of its own, stopped
by a real SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from mailout import bounces, dispatching
from mailout import subscribers as people
from mailout.cli import cli
from mailout.config import load_settings
from mailout.db import transaction
from mailout.errors import ConfigError
from mailout.issues import load_issue
from mailout.models import HandledReport, ReportAction, ReportRecipient, SubscriberStatus
from tests.smtpserver import SMTPServer
from tests.test_bounces import Sent, dsn, mailbox_state, maildir, person, send_dispatch, three_hundred, unread

#: Seconds a watching worker may take to notice what the test did.
PATIENCE = 60


@pytest.fixture
def sent(sending_workspace: Path, engine: Engine, smtp_server: SMTPServer) -> Sent:
    return send_dispatch(sending_workspace, engine, smtp_server, 6)


def hard(sent: Sent, address: str) -> bytes:
    return dsn(sent.envelope(address), address, "5.1.1", sent.headers(address))


def closed_port() -> int:
    """A loopback port nothing listens on (taken, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def handled(engine: Engine) -> int:
    with transaction(engine) as session:
        return session.scalar(select(func.count()).select_from(HandledReport)) or 0


def settled(engine: Engine) -> int:
    with transaction(engine) as session:
        query = select(func.count()).select_from(HandledReport).where(HandledReport.settled.is_(True))
        return session.scalar(query) or 0


# --- one pass ------------------------------------------------------------------------------------


def test_one_pass_sends_then_reads_the_mailbox_once(
    sent: Sent, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = maildir(tmp_path / "bounces", hard(sent, "p0@example.org"))
    monkeypatch.setenv("MAILOUT_BOUNCES_MAILBOX", str(box))
    runner = CliRunner()
    first = runner.invoke(cli, ["worker"])
    assert first.exit_code == 0, first.output
    lines = first.output.splitlines()
    assert lines[0] == "nothing to send" and lines[1] == f"bounce mailbox {box}:"
    assert lines[2].split()[:4] == ["dsn", "verp", "bounced", "p0@example.org"]
    assert lines[-1] == "1 new report: 1 bounced; 0 left for a person; 0 handled before"
    assert person(engine, "p0@example.org").status == SubscriberStatus.BOUNCED
    assert unread(box) == 0
    again = runner.invoke(cli, ["worker"])
    assert again.exit_code == 0 and again.output.splitlines()[-1].endswith("1 handled before"), again.output
    misused = runner.invoke(cli, ["worker", "--interval", "1"])
    assert misused.exit_code == 2 and "--interval goes with --watch" in misused.output


def test_one_pass_moves_handled_reports_as_the_settings_say(
    sent: Sent, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = maildir(tmp_path / "bounces", hard(sent, "p1@example.org"))
    monkeypatch.setenv("MAILOUT_BOUNCES_MAILBOX", str(box))
    monkeypatch.setenv("MAILOUT_BOUNCES_MOVE_TO", "Processed")
    result = CliRunner().invoke(cli, ["worker"])
    assert result.exit_code == 0, result.output
    assert len(list((box / ".Processed" / "cur").iterdir())) == 1
    assert not list((box / "cur").iterdir()) and not list((box / "new").iterdir())


def test_a_mailbox_that_cannot_be_read_is_one_line_and_exit_1_after_sending(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(sending_workspace)
    issue = load_issue(sending_workspace / "issues" / "2019-01" / "issue.yaml")
    with transaction(engine) as session:
        people.add(session, people.ensure_list(session, settings.mailing_list("members")), "a@example.org")
    dispatching.start(engine, settings, dispatching.plan(engine, settings, issue, "members"))
    monkeypatch.setenv("MAILOUT_BOUNCES_MAILBOX", f"imap://bounces@127.0.0.1:{closed_port()}/INBOX")
    monkeypatch.setenv("MAILOUT_IMAP_PASSWORD", "not-used")
    result = CliRunner().invoke(cli, ["worker"])
    assert result.exit_code == 1, result.output
    assert [m.rcpt_tos for m in smtp_server.messages] == [["a@example.org"]], "the dispatch went first"
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: bounce mailbox: imap://bounces@127.0.0.1:")
    assert "Traceback" not in result.output


def test_the_settings_refuse_a_password_in_the_mailbox_and_two_endings(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILOUT_BOUNCES_MAILBOX", "imaps://bounces:hunter2@imap.example.org/INBOX")
    with pytest.raises(ConfigError, match="MAILOUT_IMAP_PASSWORD") as refused:
        load_settings(workspace)
    assert "hunter2" not in str(refused.value)
    monkeypatch.setenv("MAILOUT_BOUNCES_MAILBOX", "imaps://bounces%40efus.example@imap.example.org:993/INBOX")
    monkeypatch.setenv("MAILOUT_BOUNCES_POLL_MINUTES", "0.5")
    settings = load_settings(workspace)
    assert settings.bounces.poll_minutes == 0.5 and settings.bounces.move_to == ""
    monkeypatch.setenv("MAILOUT_BOUNCES_POLL_MINUTES", "0")
    with pytest.raises(ConfigError, match=r"bounces\.poll_minutes.*more than 0"):
        load_settings(workspace)
    monkeypatch.delenv("MAILOUT_BOUNCES_POLL_MINUTES")
    monkeypatch.setenv("MAILOUT_BOUNCES_MOVE_TO", "Processed")
    monkeypatch.setenv("MAILOUT_BOUNCES_DELETE", "true")
    with pytest.raises(ConfigError, match=r"moved .* or deleted, not both"):
        load_settings(workspace)


# --- --watch, in a process of its own ------------------------------------------------------------------


class Watcher:
    """`mailout worker --watch` in a process of its own; its output goes to files."""

    def __init__(self, workspace: Path, folder: Path, **env: str) -> None:
        self.out, self.err = folder / "worker.out", folder / "worker.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailout", "worker", "--watch", "--interval", "0.2"],
                cwd=workspace, env={**os.environ, **env}, stdout=out, stderr=err,
            )  # fmt: skip

    def output(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def errors(self) -> str:
        return self.err.read_text(encoding="utf-8", errors="replace")

    def until(self, what: Callable[[], object], why: str) -> None:
        deadline = time.monotonic() + PATIENCE
        while not what():
            assert self.process.poll() is None, f"the worker ended: {self.output()}{self.errors()}"
            assert time.monotonic() < deadline, f"{why}: {self.output()}{self.errors()}"
            time.sleep(0.05)

    def terminate(self) -> tuple[int, float]:
        """Send SIGTERM; return the exit status and the seconds it took to exit."""
        start = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(PATIENCE)
        return status, time.monotonic() - start


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for watcher in started:
        if watcher.process.poll() is None:
            watcher.process.kill()
            watcher.process.wait()


def test_watch_reads_new_reports_sends_new_dispatches_and_stops_at_once_on_sigterm(
    sent: Sent, engine: Engine, smtp_server: SMTPServer, tmp_path: Path, watchers: list[Watcher]
) -> None:
    box = maildir(tmp_path / "bounces")
    # 0.01 minutes: a reading every 0.6 s.
    watcher = Watcher(
        sent.workspace, tmp_path, MAILOUT_BOUNCES_MAILBOX=str(box), MAILOUT_BOUNCES_POLL_MINUTES="0.01"
    )
    watchers.append(watcher)
    watcher.until(lambda: "0 new reports" in watcher.output(), "a reading at start")
    assert watcher.output().startswith("watching: dispatches every 0.2 s, the bounce mailbox every 0.01 min")

    # A report dropped in after it started.
    maildir(tmp_path / "bounces", hard(sent, "p0@example.org"))
    watcher.until(lambda: person(engine, "p0@example.org").status == SubscriberStatus.BOUNCED, "the report")
    watcher.until(lambda: unread(box) == 0, "the report marked seen")
    assert "1 new report: 1 bounced" in watcher.output()

    # A dispatch written after it started: to public, p0 (bounced now) and p1.
    issue = load_issue(sent.workspace / "issues" / "2019-01" / "issue.yaml")
    plan = dispatching.plan(engine, sent.settings, issue, "public")
    started = dispatching.start(engine, sent.settings, plan)
    watcher.until(
        lambda: dispatching.report(engine, started.dispatch_id).state == "finished", "the new dispatch"
    )
    public = [m.rcpt_tos for m in smtp_server.messages[6:]]
    assert public == [["p1@example.org"]], "sent once, and not to the bounced address"

    # Idle, between two looks: SIGTERM ends it at once.
    time.sleep(0.3)
    status, seconds = watcher.terminate()
    assert status == 3, watcher.errors()
    assert seconds < 2, f"{seconds:.1f} s to stop"
    assert watcher.output().splitlines()[-1] == "stopped"
    assert "Traceback" not in watcher.errors()


def test_a_long_dispatch_delays_a_reading_which_comes_as_soon_as_it_ends(
    sent: Sent, engine: Engine, tmp_path: Path, watchers: list[Watcher]
) -> None:
    box = maildir(tmp_path / "bounces")
    watcher = Watcher(
        sent.workspace,
        tmp_path,
        MAILOUT_BOUNCES_MAILBOX=str(box),
        MAILOUT_BOUNCES_POLL_MINUTES="0.01",
        MAILOUT_SENDING_RATE_LIMIT="2",  # the 6 messages take 2.5 s: four readings' time
    )
    watchers.append(watcher)
    watcher.until(lambda: "0 new reports" in watcher.output(), "a reading at start")
    issue = load_issue(sent.workspace / "issues" / "2019-01" / "issue.yaml")
    plan = dispatching.plan(engine, sent.settings, issue, "members", again=True)
    started = dispatching.start(engine, sent.settings, plan)
    watcher.until(lambda: f"dispatch {started.dispatch_id}:" in watcher.output(), "the dispatch taken up")
    maildir(tmp_path / "bounces", hard(sent, "p5@example.org"))
    watcher.until(lambda: "1 new report" in watcher.output(), "the reading after the dispatch")
    lines = watcher.output().splitlines()
    begun = lines.index(f"dispatch {started.dispatch_id}: 2019-01 to 'members'")
    ended = lines.index("finished", begun)
    assert not any(line.startswith("bounce mailbox") for line in lines[begun:ended]), "none while sending"
    assert lines[ended + 1].startswith("bounce mailbox"), "the delayed reading comes at once"
    assert dispatching.report(engine, started.dispatch_id).counts["sent"] == 6


def test_sigterm_during_a_pass_ends_it_after_a_committed_group_and_a_next_pass_ends_the_rest(
    sent: Sent, engine: Engine, tmp_path: Path, watchers: list[Watcher]
) -> None:
    # 1,200 reports, 12 groups of a transaction each: the signal comes before the last.
    # (A person's replies are the same bytes in each 300: told apart by their subject.)
    reports = [
        raw.replace(b"Subject: re ", f"Subject: re {k}.".encode())
        for k in range(4)
        for raw in three_hundred(sent)
    ]
    assert len(set(reports)) == 1200
    box = maildir(tmp_path / "bounces", *reports)
    watcher = Watcher(sent.workspace, tmp_path, MAILOUT_BOUNCES_MAILBOX=str(box))
    watchers.append(watcher)
    watcher.until(lambda: handled(engine) >= 30, "a pass under way")
    status, _ = watcher.terminate()
    assert status == 3, watcher.errors()
    assert "stopped; the next reading takes the rest" in watcher.output()
    done = handled(engine)
    assert 30 <= done < 1200, "stopped in the middle"
    assert done % bounces.GROUP == 0, "after a whole group, each written in one transaction"
    # No report half handled: each one recorded as settled is marked seen, and no other.
    seen = sum(flag for _, flag in mailbox_state(box))
    assert seen == settled(engine)

    rerun = CliRunner().invoke(cli, ["worker"], env={"MAILOUT_BOUNCES_MAILBOX": str(box)})
    assert rerun.exit_code == 0, rerun.output
    assert rerun.output.splitlines()[-1].endswith(f"{done} handled before"), rerun.output
    assert handled(engine) == 1200
    with transaction(engine) as session:
        actions = dict(
            session.execute(
                select(ReportRecipient.action, func.count()).group_by(ReportRecipient.action)
            ).all()
        )
    assert actions[ReportAction.BOUNCED] == 1 and actions[ReportAction.UNSUBSCRIBED] == 1
    assert actions[ReportAction.SOFT] == 200
    assert person(engine, "p0@example.org").soft_score == 1


def test_watch_says_an_unreachable_mailbox_in_one_line_and_keeps_running(
    sent: Sent, tmp_path: Path, watchers: list[Watcher]
) -> None:
    watcher = Watcher(
        sent.workspace,
        tmp_path,
        MAILOUT_BOUNCES_MAILBOX=f"imap://bounces@127.0.0.1:{closed_port()}/INBOX",
        MAILOUT_IMAP_PASSWORD="not-used",
        MAILOUT_BOUNCES_POLL_MINUTES="0.01",
    )
    watchers.append(watcher)
    watcher.until(lambda: watcher.errors().count("error: bounce mailbox:") >= 3, "three readings")
    lines = watcher.errors().splitlines()
    assert all(line.startswith("error: bounce mailbox: imap://bounces@127.0.0.1:") for line in lines), lines
    status, _ = watcher.terminate()
    assert status == 3
