"""The house rules of docs/architecture.md, checked on the source: who builds links, who writes which table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "mailout"

#: Each table's one writer (docs/architecture.md): model class -> module, and table -> module.
OWNERS = {
    "Subscriber": "subscribers.py",
    "Subscription": "subscribers.py",
    "ConsentEvent": "subscribers.py",
    "MailingList": "subscribers.py",
    "Dispatch": "outbox.py",
    "DispatchVariant": "outbox.py",
    "Delivery": "outbox.py",
    "Worker": "outbox.py",
    "MailRequest": "unsubmail.py",
    "HandledReport": "bounces.py",
    "ReportRecipient": "bounces.py",
    "ConsentText": "subscribers.py",
    "Signup": "signup.py",
    "Erasure": "privacy.py",
    "Approval": "approvals.py",
    "RouteLock": "quota.py",
    "RouteUsage": "quota.py",
}
TABLES = {
    "subscribers": "subscribers.py",
    "subscriptions": "subscribers.py",
    "consent_events": "subscribers.py",
    "lists": "subscribers.py",
    "dispatches": "outbox.py",
    "dispatch_variants": "outbox.py",
    "deliveries": "outbox.py",
    "workers": "outbox.py",
    "mail_requests": "unsubmail.py",
    "handled_reports": "bounces.py",
    "report_recipients": "bounces.py",
    "consent_texts": "subscribers.py",
    "signups": "signup.py",
    "erasures": "privacy.py",
    "approvals": "approvals.py",
    "routes": "quota.py",
    "route_usage": "quota.py",
}
_RAW_WRITE = re.compile(r"^\s*(?:UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+(\w+)", re.IGNORECASE)


def modules() -> list[tuple[str, ast.Module]]:
    """Every module of the package but the migrations (which write every table, once)."""
    return [
        (path.relative_to(SRC).as_posix(), ast.parse(path.read_text(encoding="utf-8")))
        for path in sorted(SRC.rglob("*.py"))
        if "migrations" not in path.parts
    ]


def writes(tree: ast.Module) -> set[str]:
    """Return the tables a module writes: insert/update/delete of a model, session.add(Model(...)), raw SQL."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
            name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            first = node.args[0] if node.args else None
            if name in ("insert", "update", "delete") and isinstance(first, ast.Name) and first.id in OWNERS:
                found.add(first.id)
            if (
                name in ("add", "add_all")
                and isinstance(first, ast.Call)
                and isinstance(first.func, ast.Name)
                and first.func.id in OWNERS
            ):
                found.add(first.func.id)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _RAW_WRITE.match(node.value)
            if match and match.group(1).lower() in TABLES:
                found.add(match.group(1).lower())
    return found


def test_each_table_is_written_by_its_one_module() -> None:
    seen: dict[str, set[str]] = {}
    for name, tree in modules():
        for what in writes(tree):
            owner = OWNERS.get(what) or TABLES[what]
            assert name == owner, (
                f"{name} writes {what}, which only {owner} may write: call a function of {owner}"
            )
            seen.setdefault(owner, set()).add(what)
    # The scan itself must see something, or it proves nothing.
    assert {"Delivery", "Dispatch", "DispatchVariant", "Worker"} <= seen["outbox.py"] | {"deliveries"}
    assert {"Subscriber", "Subscription", "ConsentEvent"} <= seen["subscribers.py"]


def test_the_scan_catches_a_write_from_the_wrong_module() -> None:
    tree = ast.parse(
        "conn.execute(update(Delivery).values(status='sent'))\nsession.add(Subscriber(email='x'))"
    )
    assert writes(tree) == {"Delivery", "Subscriber"}
    assert writes(ast.parse("sql = 'UPDATE deliveries SET status = 1'")) == {"deliveries"}


def test_the_command_line_runs_no_query_of_its_own() -> None:
    for name, tree in modules():
        if not name.startswith("cli/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                assert not (module or "").startswith("sqlalchemy"), f"{name} imports {module}"


@pytest.mark.parametrize("attribute", ["public_base_url"])
def test_only_the_links_module_reads_the_base_url(attribute: str) -> None:
    readers = {
        name
        for name, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == attribute
    }
    # config.py reads it to check it; every other module asks links.Links for a URL.
    assert readers == {"config.py", "links.py"}, (
        f"{sorted(readers)} read newsletter.{attribute}: ask links.Links"
    )
