"""Approvals on SQLite and PostgreSQL, of the example issue rendered for real: approve, require, state.

A dispatch is written here as `send` writes it (``dispatching.plan`` and ``start``); the gate
that calls ``require`` when a dispatch starts is tested with scheduling, so ``require`` is
called directly here, in a transaction as the start's.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import re
import shutil
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select, update

from mailout import approvals, dispatching, outbox
from mailout import subscribers as people
from mailout.approvals import ApprovalRefused, NotApproved
from mailout.cli import cli
from mailout.config import Settings, load_settings
from mailout.db import make_engine, transaction, upgrade
from mailout.issues import Issue, load_issue
from mailout.models import Approval, Dispatch
from mailout.preview import write_preview
from mailout.web import create_app
from tests.conftest import EXAMPLE_ISSUE, SECRET_KEY, edit_config, sending_config
from tests.smtpserver import SMTPServer
from tests.test_migrations import fill, rows

ZOE = "Zoë Dupont <zoe@efus.example>"
MAX = "Max Weber <max@efus.example>"
LATER = dt.datetime(2099, 2, 12, 8, 0, tzinfo=dt.UTC)


def setup(workspace: Path, engine: Engine, n: int = 3) -> tuple[Settings, Settings, Issue]:
    """Subscribe n people to members and to public; return the settings (without, with approval) and the issue."""
    settings = load_settings(workspace)
    with transaction(engine) as session:
        for name in ("members", "public"):
            lst = people.ensure_list(session, settings.mailing_list(name))
            for i in range(n):
                people.add(session, lst, f"p{i}@example.org", name=f"Person {i}")
    required = load_settings(workspace, overrides={"sending.require_approval": "true"})
    assert required.sending.require_approval and not settings.sending.require_approval
    return settings, required, issue_of(workspace)


def issue_of(workspace: Path) -> Issue:
    return load_issue(workspace / "issues" / "2019-01" / "issue.yaml")


def write(
    engine: Engine,
    settings: Settings,
    issue: Issue,
    list_name: str = "members",
    *,
    by: str = MAX,
    again: bool = False,
) -> int:
    """Write a dispatch as `send --at` does (scheduled, not started); return its id."""
    plan = dispatching.plan(engine, settings, issue, list_name, at=LATER, by=by, again=again)
    return dispatching.start(engine, settings, plan).dispatch_id


def check(engine: Engine, settings: Settings, dispatch_id: int) -> None:
    """Call ``require`` in a transaction, as the start of the dispatch does."""
    with transaction(engine) as session:
        dispatch = session.get(Dispatch, dispatch_id)
        assert dispatch is not None
        approvals.require(session, settings, dispatch)


def edit_translation(workspace: Path) -> None:
    """Change one French text of the issue on disk: only the French variants change."""
    path = workspace / "issues" / "2019-01" / "issue.yaml"
    text = path.read_text(encoding="utf-8")
    assert "title.fr: Agenda\n" in text
    path.write_text(text.replace("title.fr: Agenda\n", "title.fr: Agenda de l'année\n"), encoding="utf-8")


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


# --- digests ---------------------------------------------------------------------------


def test_the_same_issue_rendered_twice_has_the_same_digest_and_one_translation_changes_one(
    repo_settings: Settings, copy_example: Path
) -> None:
    issue = load_issue(copy_example / "issue.yaml")
    first = dispatching.variants_for_list(repo_settings, issue, "members")
    second = dispatching.variants_for_list(repo_settings, issue, "members")
    # Rendered twice, the placeholders' names differ (random per rendering); the digests do not.
    assert first["en"].tokens != second["en"].tokens
    assert approvals.digest(first) == approvals.digest(second)
    assert list(approvals.digest(first)) == ["en", "fr"]
    assert all(re.fullmatch("[0-9a-f]{64}", sha) for sha in approvals.digest(first).values())
    public = approvals.digest(dispatching.variants_for_list(repo_settings, issue, "public"))
    assert public["en"] != approvals.digest(first)["en"], "the members' variant shows more"
    edit_translation(copy_example.parent.parent)
    edited = approvals.digest(
        dispatching.variants_for_list(repo_settings, load_issue(copy_example / "issue.yaml"), "members")
    )
    assert edited["en"] == approvals.digest(first)["en"]
    assert edited["fr"] != approvals.digest(first)["fr"]
    assert approvals.changed(approvals.digest(first), edited) == ("fr",)
    assert approvals.changed({"en": "a"}, {"en": "a", "de": "b"}) == ("de",), "a language added is a change"


def test_a_frozen_variant_hashes_as_it_was_rendered(sending_workspace: Path, engine: Engine) -> None:
    settings, _, issue = setup(sending_workspace, engine)
    plan = dispatching.plan(engine, settings, issue, "members", at=LATER, by=MAX)
    dispatch_id = dispatching.start(engine, settings, plan).dispatch_id
    with transaction(engine) as session:
        dispatch = session.get(Dispatch, dispatch_id)
        assert dispatch is not None
        frozen = outbox.frozen_variants(session, dispatch)
    assert approvals.digest(frozen) == approvals.digest(plan.variants)


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        (ZOE, "zoë <ZOE@efus.example>", True),
        (ZOE, "Zoé D. <zoe@efus.example>", True),
        (ZOE, "zoe@efus.example", True),
        (ZOE, MAX, False),
        ("zoe", "Zoe", True),
        # The login on a server without git, and the name without the address (review).
        ("zoe", ZOE, True),
        ("Alice <alice@x.org>", "Alice", True),
        ("Alice <alice@x.org>", "alice", True),
        ("Zo\u00eb", "Zoe\u0308", True),
        ("Alice <alice@x.org>", "Bob <bob@x.org>", False),
        ("Alice", "alice2", False),
        # Second look: role addresses of two organisations; text with an "@" but no address.
        ("Info <info@org.pt>", "Comms <info@partner.org>", False),
        ("newsletter@org.pt", "Bob <newsletter@other.org>", False),
        ("Zoë (zoe@efus.example)", "Zoë (zoe@efus.example)", True),
        ("", "", False),
        (ZOE, "", False),
    ],
)
def test_people_are_told_apart_by_address_else_by_name(one: str, other: str, same: bool) -> None:
    assert approvals.same_person(one, other) is same
    assert approvals.same_person(other, one) is same


# --- approve, then send; send, then approve ---------------------------------------------


def test_an_approval_before_the_send_lets_the_dispatch_start(sending_workspace: Path, engine: Engine) -> None:
    settings, required, issue = setup(sending_workspace, engine)
    approved = approvals.approve(engine, settings, issue, "members", ZOE)
    assert approved.dispatch_id is None and approved.approved_by == ZOE
    assert approved.digests == approvals.digest(dispatching.variants_for_list(settings, issue, "members"))
    dispatch_id = write(engine, settings, issue)
    check(engine, settings, dispatch_id)  # without sending.require_approval: nothing asked
    check(engine, required, dispatch_id)  # approved by Zoë, written by Max: it may start
    with transaction(engine) as session:
        found = approvals.state(
            session, issue.slug, session.get(Dispatch, dispatch_id).list_id,  # type: ignore[union-attr]
            dispatching.variants_for_list(settings, issue, "members"),
        )  # fmt: skip
    assert found is not None and found.current and found.approved_by == ZOE


def test_a_dispatch_written_first_is_approved_as_frozen(sending_workspace: Path, engine: Engine) -> None:
    settings, required, issue = setup(sending_workspace, engine)
    dispatch_id = write(engine, settings, issue)
    with pytest.raises(NotApproved, match=rf"dispatch {dispatch_id} of 2019-01 to 'members' is not approved"):
        check(engine, required, dispatch_id)
    approved = approvals.approve(engine, settings, issue, "members", ZOE)
    assert approved.dispatch_id == dispatch_id and approved.differs == ()
    check(engine, required, dispatch_id)


def test_a_dispatch_awaiting_approval_is_approved_as_frozen(sending_workspace: Path, engine: Engine) -> None:
    settings, required, issue = setup(sending_workspace, engine)
    plan = dispatching.plan(engine, settings, issue, "members", by=MAX)
    dispatch_id = dispatching.start(engine, settings, plan).dispatch_id
    # Awaiting approval: written with no instant and not started (what `send` writes with
    # sending.require_approval; set here by hand, the start gate being scheduling's).
    with engine.begin() as conn:
        conn.execute(update(Dispatch).where(Dispatch.id == dispatch_id).values(started_at=None))
    approved = approvals.approve(engine, settings, issue, "members", ZOE)
    assert approved.dispatch_id == dispatch_id
    check(engine, required, dispatch_id)
    # Once started, a dispatch is no longer what an approval waits on: the issue as it is now is.
    with engine.begin() as conn:
        conn.execute(update(Dispatch).where(Dispatch.id == dispatch_id).values(started_at=func.now()))
    assert approvals.approve(engine, settings, issue, "members", ZOE).dispatch_id is None


def test_its_writer_cannot_approve_a_dispatch(sending_workspace: Path, engine: Engine) -> None:
    settings, required, issue = setup(sending_workspace, engine)
    dispatch_id = write(engine, settings, issue, by=MAX)
    with pytest.raises(ApprovalRefused, match="must come from someone else"):
        approvals.approve(engine, settings, issue, "members", "MAX <Max@Efus.example>")
    with pytest.raises(NotApproved, match="not approved"):
        check(engine, required, dispatch_id)
    assert count_approvals(engine) == 0


def test_an_approval_by_the_writer_given_before_the_send_is_not_enough(
    sending_workspace: Path, engine: Engine
) -> None:
    settings, required, issue = setup(sending_workspace, engine)
    approvals.approve(engine, settings, issue, "members", MAX)  # no dispatch yet: recorded
    dispatch_id = write(engine, settings, issue, by="max weber <MAX@efus.example>")
    with pytest.raises(NotApproved, match=r"approved by its own writer \(Max Weber <max@efus.example>\)"):
        check(engine, required, dispatch_id)
    approvals.approve(engine, settings, issue, "members", ZOE)
    check(engine, required, dispatch_id)


# --- the issue changed -----------------------------------------------------------------


def test_an_issue_edited_after_its_approval_is_refused_naming_the_variant(
    sending_workspace: Path, engine: Engine
) -> None:
    settings, required, issue = setup(sending_workspace, engine)
    approved = approvals.approve(engine, settings, issue, "members", ZOE)
    edit_translation(sending_workspace)
    dispatch_id = write(engine, settings, issue_of(sending_workspace))
    stamp = approved.approved_at.strftime("%Y-%m-%d %H:%M UTC")
    with pytest.raises(
        NotApproved, match=rf"variant fr changed since {ZOE} approved it at {stamp}"
    ) as caught:
        check(engine, required, dispatch_id)
    assert "variant en" not in str(caught.value) and "variants" not in str(caught.value)
    # Approved again as it is now, it may start.
    again = approvals.approve(engine, settings, issue_of(sending_workspace), "members", ZOE)
    assert again.dispatch_id == dispatch_id
    check(engine, required, dispatch_id)


def test_an_approval_refuses_a_frozen_dispatch_the_file_no_longer_renders_unless_frozen(
    sending_workspace: Path, engine: Engine
) -> None:
    settings, required, issue = setup(sending_workspace, engine)
    dispatch_id = write(engine, settings, issue)
    edit_translation(sending_workspace)
    edited = issue_of(sending_workspace)
    with pytest.raises(ApprovalRefused, match=r"variant fr differs\..*cancel it .*--frozen"):
        approvals.approve(engine, settings, edited, "members", ZOE)
    assert count_approvals(engine) == 0
    approved = approvals.approve(engine, settings, edited, "members", ZOE, frozen=True)
    assert approved.dispatch_id == dispatch_id and approved.differs == ("fr",)
    check(engine, required, dispatch_id)  # what was frozen is what was approved
    # The preview, of the file as it is now, says the French variants differ from the approval.
    with transaction(engine) as session:
        lst_id = session.get(Dispatch, dispatch_id).list_id  # type: ignore[union-attr]
        now = approvals.state(
            session, "2019-01", lst_id, dispatching.variants_for_list(settings, edited, "members")
        )
    assert now is not None and now.changed == ("fr",)


def test_frozen_needs_a_waiting_dispatch(sending_workspace: Path, engine: Engine) -> None:
    settings, _, issue = setup(sending_workspace, engine)
    with pytest.raises(ApprovalRefused, match="no dispatch of 2019-01 to 'members' waits"):
        approvals.approve(engine, settings, issue, "members", ZOE, frozen=True)


# --- lists, generations ------------------------------------------------------------------


def test_an_approval_for_the_members_list_does_not_approve_the_public_list(
    sending_workspace: Path, engine: Engine
) -> None:
    settings, required, issue = setup(sending_workspace, engine)
    approvals.approve(engine, settings, issue, "members", ZOE)
    public = write(engine, settings, issue, "public")
    with pytest.raises(NotApproved, match=r"to 'public' is not approved"):
        check(engine, required, public)
    members = write(engine, settings, issue, "members")
    check(engine, required, members)
    states = approvals.for_lists(
        engine, settings, "2019-01",
        {(v.segment, lang): v for name in ("members", "public")
         for lang, v in dispatching.variants_for_list(settings, issue, name).items()},
    )  # fmt: skip
    said = {a.list_name: a.describe() for a in states}
    assert said["members"].startswith(f"approved by {ZOE} at ") and said["public"] == "not approved"


def test_an_approval_for_one_dispatch_does_not_approve_the_next(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer
) -> None:
    settings, required, issue = setup(sending_workspace, engine)
    approvals.approve(engine, settings, issue, "members", ZOE)
    first = dispatching.start(engine, settings, dispatching.plan(engine, settings, issue, "members", by=MAX))
    check(engine, required, first.dispatch_id)
    from mailout.tokens import Signer

    dispatching.run(engine, settings, first.dispatch_id, Signer.from_secret(SECRET_KEY))
    # `send --again`: the same content, but the approval was given for the first send.
    second = write(engine, settings, issue, again=True)
    with pytest.raises(NotApproved, match="is not approved"):
        check(engine, required, second)
    approvals.approve(engine, settings, issue, "members", ZOE)
    check(engine, required, second)


# --- at the same instant, and on old data ------------------------------------------------


def count_approvals(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(Approval)) or 0)


def test_two_approvals_at_the_same_instant_are_both_recorded(sending_workspace: Path, engine: Engine) -> None:
    settings, required, issue = setup(sending_workspace, engine)
    dispatch_id = write(engine, settings, issue)
    barrier = threading.Barrier(2)
    results: dict[str, object] = {}

    def approve(by: str) -> None:
        barrier.wait()
        try:
            results[by] = approvals.approve(engine, settings, issue_of(sending_workspace), "members", by)
        except Exception as exc:  # reported by the assertion below
            results[by] = exc

    threads = [threading.Thread(target=approve, args=(by,)) for by in (ZOE, "Ana <ana@efus.example>")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(
        isinstance(r, approvals.Approved) and r.dispatch_id == dispatch_id for r in results.values()
    ), results
    assert count_approvals(engine) == 2
    check(engine, required, dispatch_id)


def test_an_approval_and_a_send_at_the_same_instant_agree(sending_workspace: Path, engine: Engine) -> None:
    settings, required, issue = setup(sending_workspace, engine)
    barrier = threading.Barrier(2)
    written: list[int] = []

    def approve() -> None:
        barrier.wait()
        approvals.approve(engine, settings, issue, "members", ZOE)

    def send() -> None:
        plan = dispatching.plan(engine, settings, issue, "members", at=LATER, by=MAX)
        barrier.wait()
        written.append(dispatching.start(engine, settings, plan).dispatch_id)

    threads = [threading.Thread(target=approve), threading.Thread(target=send)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Whichever came first, the approval is of this dispatch (or given before it was written).
    check(engine, required, written[0])


def test_an_approval_recorded_on_an_upgraded_database(
    empty_database_url: str, workspace: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workspace / "mailout.toml").write_text(sending_config(smtp_server.port), encoding="utf-8")
    shutil.copytree(EXAMPLE_ISSUE.parent, workspace / "issues" / "2019-01")
    monkeypatch.setenv("MAILOUT_SECRET_KEY", SECRET_KEY)
    upgrade(empty_database_url, "0011")
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as conn:
            fill(conn, rows())
        upgrade(empty_database_url)
        settings = load_settings(workspace)
        required = load_settings(workspace, overrides={"sending.require_approval": "true"})
        issue = issue_of(workspace)
        # 2019-01 went to members twice before 0012 (finished, written by nobody recorded).
        approved = approvals.approve(engine, settings, issue, "members", ZOE)
        assert approved.dispatch_id is None
        third = write(engine, settings, issue, again=True)
        with transaction(engine) as session:
            dispatch = session.get(Dispatch, third)
            assert dispatch is not None and dispatch.generation == 3
        check(engine, required, third)
        # A dispatch written before 0012 has no writer: anyone's approval of it is another's.
        with transaction(engine) as session:
            old = session.get(Dispatch, 2)
            assert old is not None and old.created_by == ""
            stored = json.loads(session.scalar(select(Approval.variants).where(Approval.id == 1)) or "{}")
            assert set(stored) == {"en", "fr"}, "the approval rows() put in are read as they were"
    finally:
        engine.dispose()


# --- the command, the test messages, the preview -----------------------------------------


def test_the_approve_command_prints_each_variant_and_refuses_the_writer(
    sending_workspace: Path, engine: Engine
) -> None:
    setup(sending_workspace, engine)
    code, out = run("approve", "2019-01", "--list", "members", "--by", ZOE)
    assert code == 0, out
    assert f"approved 2019-01 as it renders now for 'members' by {ZOE}" in out
    shown = dict(re.findall(r"^  (\w+)\s+sha256 ([0-9a-f]+)$", out, re.M))
    assert set(shown) == {"en", "fr"} and all(len(sha) == 12 for sha in shown.values())
    with transaction(engine) as session:
        stored = json.loads(session.scalars(select(Approval.variants)).one())
    assert {lang: sha[:12] for lang, sha in stored.items()} == shown
    code, out = run("send", "2019-01", "--list", "members", "--yes", "--dry-run")
    assert code == 0, out
    settings = load_settings(sending_workspace)
    dispatch_id = write(engine, settings, issue_of(sending_workspace), by=ZOE)
    code, out = run("approve", "2019-01", "--list", "members", "--by", "zoe@efus.example")
    assert code == 1 and "must come from someone else" in out
    code, out = run("approve", "2019-01", "--list", "members", "--by", MAX)
    assert code == 0 and f"approved dispatch {dispatch_id} of 2019-01 for 'members' by {MAX}" in out
    code, out = run("approve", "2019-01", "--list", "nowhere", "--by", MAX)
    assert code == 1 and "no list 'nowhere'" in out


def test_test_messages_say_whether_each_list_has_the_issue_approved(
    sending_workspace: Path, engine: Engine, smtp_server: SMTPServer
) -> None:
    setup(sending_workspace, engine)
    code, out = run("test", "2019-01", "--to", "me@example.org", "--language", "en")
    assert code == 0, out
    assert sorted(r.message()["Subject"] for r in smtp_server.messages) == [
        "[TEST member en] Efus Newsletter – January 2019",
        "[TEST public en] Efus Newsletter – January 2019",
    ], "without sending.require_approval, the subject is as before"
    edit_config(sending_workspace, ("[sending]\n", "[sending]\nrequire_approval = true\n"))
    assert run("approve", "2019-01", "--list", "members", "--by", ZOE)[0] == 0
    seen = len(smtp_server.messages)
    code, out = run("test", "2019-01", "--to", "me@example.org")
    assert code == 0, out
    subjects = sorted(
        email.message_from_bytes(r.raw, policy=email.policy.default)["Subject"]
        for r in smtp_server.messages[seen:]
    )
    assert subjects == [
        "[TEST member en · approved by Zoë Dupont] Efus Newsletter – January 2019",
        "[TEST member fr · approved by Zoë Dupont] Lettre d'information de l'Efus – janvier 2019",
        "[TEST public en · not approved] Efus Newsletter – January 2019",
        "[TEST public fr · not approved] Lettre d'information de l'Efus – janvier 2019",
    ]
    edit_translation(sending_workspace)
    seen = len(smtp_server.messages)
    assert run("test", "2019-01", "--to", "me@example.org", "--language", "fr")[0] == 0
    assert sorted(r.message()["Subject"].split("] ")[0] for r in smtp_server.messages[seen:]) == [
        "[TEST member fr · changed since approved: fr",
        "[TEST public fr · not approved",
    ]


def test_the_preview_says_who_approved_each_list_escaped(
    sending_workspace: Path, engine: Engine, tmp_path: Path
) -> None:
    settings, _, issue = setup(sending_workspace, engine)
    approvals.approve(engine, settings, issue, "members", "<script>alert(1)</script> <x@efus.example>")
    app = create_app(load_settings(sending_workspace), local=True)
    try:
        page = app.test_client().get("/preview/2019-01").get_data(as_text=True)
    finally:
        app.extensions["mailout"].engine.dispose()
    assert "approved by &lt;script&gt;alert(1)&lt;/script&gt; &lt;x@efus.example&gt; at" in page
    assert "<script>alert" not in page
    assert re.search(r'id="approval-public".*?class="warn">not approved<', page, re.S)
    write_preview(issue, settings, tmp_path / "build", engine=engine)
    grid = (tmp_path / "build" / "index.html").read_text(encoding="utf-8")
    assert "approved by &lt;script&gt;" in grid and "<script>alert" not in grid
    write_preview(issue, settings, tmp_path / "plain")
    assert "approval-members" not in (tmp_path / "plain" / "index.html").read_text(encoding="utf-8")


def test_mailout_preview_shows_the_approvals_when_they_are_required(
    sending_workspace: Path, engine: Engine
) -> None:
    setup(sending_workspace, engine)
    assert run("approve", "2019-01", "--list", "members", "--by", ZOE)[0] == 0
    code, out = run("preview", "2019-01")
    assert code == 0, out
    grid = (sending_workspace / "build" / "2019-01" / "index.html").read_text(encoding="utf-8")
    assert "approval-members" not in grid, "without sending.require_approval the grid is as before"
    code, out = run("--set", "sending.require_approval=true", "preview", "2019-01")
    assert code == 0, out
    grid = (sending_workspace / "build" / "2019-01" / "index.html").read_text(encoding="utf-8")
    assert "approved by Zoë Dupont &lt;zoe@efus.example&gt; at " in grid
    assert re.search(r'id="approval-public".*?>not approved<', grid, re.S)


def test_mailout_preview_without_a_database_still_writes_the_grid(workspace: Path) -> None:
    result = CliRunner().invoke(cli, ["--set", "sending.require_approval=true", "preview", "first-issue"])
    assert result.exit_code == 0, result.output
    assert "warning: the grid cannot say what is approved" in result.output
    assert (workspace / "build" / "first-issue" / "index.html").is_file()
