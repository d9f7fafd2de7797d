"""End to end: a dispatch through a relay that accepts everything, its bounce, and the next dispatch.

The relay is a real Postfix (tests/postfix.py): it accepts every recipient of the
dispatch, delivers ``local.test.example`` itself, where no user exists, and
relays the rest to the loopback SMTP server. For the unknown user it writes a
real DSN to the delivery's own return address (VERP), which the loopback server
receives; the test files it in the bounce mailbox (a Maildir) as a mail server
would, and ``mailout bounces process`` reads it.
"""

from __future__ import annotations

import mailbox
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from mailout.config import load_settings
from mailout.db import make_engine, transaction
from mailout.models import ConsentEvent, Delivery, Subscriber
from tests.conftest import edit_config
from tests.postfix import PostfixRelay
from tests.smtpserver import SMTPServer
from tests.test_sending import add_subscribers, people, run

RETURN_PATH = "bounces@efus.example"
DEAD = "nosuch@local.test.example"


def _people_state(workspace: Path) -> dict[str, str]:
    engine = make_engine(load_settings(workspace).database_url())
    with transaction(engine) as session:
        found = {
            email: str(status)
            for email, status in session.execute(select(Subscriber.email, Subscriber.status))
        }
    engine.dispose()
    return found


def _recipients(workspace: Path, dispatch_id: int) -> set[str]:
    engine = make_engine(load_settings(workspace).database_url())
    with transaction(engine) as session:
        found = set(session.scalars(select(Delivery.email).where(Delivery.dispatch_id == dispatch_id)))
    engine.dispose()
    return found


def _bounce_events(workspace: Path) -> list[str]:
    engine = make_engine(load_settings(workspace).database_url())
    with transaction(engine) as session:
        found = list(session.scalars(select(ConsentEvent.detail).where(ConsentEvent.kind == "bounced")))
    engine.dispose()
    return found


def _forged(raw: bytes) -> bytes:
    """The same report for another subscriber, sent to a return address with a made-up MAC."""
    text = raw.decode("utf-8", "replace")
    forged = re.sub(r"(bounces\+\d+\.\d+\.)[a-z2-7]{10}@", r"\1aaaaaaaaaa@", text)
    assert forged != text, "the real DSN names no VERP address"
    forged = forged.replace(DEAD, "p1@example.org").replace("Message-Id: <", "Message-Id: <forged.")
    return forged.encode()


@pytest.mark.slow
def test_a_relayed_dispatch_its_late_bounce_and_the_next_dispatch(
    sending_workspace: Path, smtp_server: SMTPServer, postfix_local: PostfixRelay
) -> None:
    edit_config(
        sending_workspace,
        (f"port = {smtp_server.port}", f"port = {postfix_local.port}"),
        ("timeout = 5", "timeout = 30"),  # a relay on a loaded machine: as the other Postfix tests
        ('reply_to = "team@efus.example"', f'reply_to = "team@efus.example"\nreturn_path = "{RETURN_PATH}"'),
    )
    add_subscribers(sending_workspace, [*people(4), (DEAD, "Nobody")])
    code, out = run("send", "2019-01", "--list", "members", "--yes")
    assert code == 0, out

    # The relay took all five; four arrive, and a DSN comes back later for the fifth.
    received = smtp_server.wait_for(5, timeout=60)
    bounces = [m for m in received if m.mail_from in ("", "<>")]
    delivered = [m for m in received if m not in bounces]
    assert sorted(r for m in delivered for r in m.rcpt_tos) == [f"p{i}@example.org" for i in range(4)]
    [bounce] = bounces
    [verp] = bounce.rcpt_tos
    assert re.fullmatch(r"bounces\+1\.\d+\.[a-z2-7]{10}@efus\.example", verp), verp

    box = mailbox.Maildir(sending_workspace / "bounce-box", create=True)
    box.add(_forged(bounce.raw))  # first: a forged report must not bounce p1
    box.add(bounce.raw)
    box.close()

    code, out = run("bounces", "process", str(sending_workspace / "bounce-box"))
    assert code == 0, out
    state = _people_state(sending_workspace)
    assert state[DEAD] == "bounced", out
    assert {state[f"p{i}@example.org"] for i in range(4)} == {"subscribed"}, out
    [event] = _bounce_events(sending_workspace)
    assert "5.1.1" in event, event

    # Read again: nothing more happens.
    code, again = run("bounces", "process", str(sending_workspace / "bounce-box"))
    assert code == 0, again
    assert _bounce_events(sending_workspace) == [event]

    # The next dispatch skips the dead address.
    code, out = run("send", "2019-01", "--list", "members", "--yes", "--again")
    assert code == 0, out
    assert _recipients(sending_workspace, 2) == {f"p{i}@example.org" for i in range(4)}
