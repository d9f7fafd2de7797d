"""Upgrades keep every row: databases full of data, at every earlier schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from mailout.cli import cli
from mailout.db import alembic_config, current_revision, head_revision, make_engine, upgrade
from mailout.errors import DatabaseError
from mailout.models import (
    DeliveryStatus,
    EventKind,
    Source,
    SubscriberStatus,
    SubscriptionStatus,
)
from tests.conftest import REPO

#: Every revision but the newest, oldest first: each is a schema a user may upgrade from.
EARLIER = [
    r.revision
    for r in reversed(list(ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()))
][:-1]

#: Parents first, so that every foreign key finds its row.
TABLES = (
    "lists",
    "subscribers",
    "subscriptions",
    "consent_events",
    "dispatches",
    "dispatch_variants",
    "deliveries",
    "workers",
    "mail_requests",
    "handled_reports",
    "report_recipients",
    "consent_texts",
    "signups",
    "erasures",
    "approvals",
    "routes",
    "route_usage",
)

T0 = dt.datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=dt.UTC)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


FIRST = ["Ana", "Zoë", "Björn", "Chiara", "Łukasz", "Maëlle", "Seán", "Jürgen", "Inés", "Nikos"]
DOMAINS = ["lisboa.example", "efus.example", "ville-lyon.example", "comune.example"]


def subscriber_status(i: int) -> SubscriberStatus:
    if i == 42:
        return SubscriberStatus.COMPLAINED
    if i % 17 == 5:
        return SubscriberStatus.BOUNCED
    if i % 10 == 7:
        return SubscriberStatus.UNSUBSCRIBED
    return SubscriberStatus.SUBSCRIBED


def rows() -> dict[str, list[dict[str, Any]]]:
    """Realistic rows for every table, with every column of the newest schema.

    A column added by a later migration holds the value the upgrade must give it
    (``email_key``: the address lower-cased; ``generation``: the dispatches of an issue to
    a list numbered in id order; ``process``: ""; ``signing`` and ``envelope_sender``, of dispatches
    and of deliveries: NULL, not known; ``soft_score``: 0, ``soft_day`` and ``soft_bounced_at``:
    NULL; ``language`` of dispatches and deliveries: NULL, the dispatch's one variant;
    ``subscribers.language``: canonical already, so kept); the test refuses rows that lack a column.
    """
    data: dict[str, list[dict[str, Any]]] = {table: [] for table in TABLES}
    data["lists"] = [
        {"id": 1, "name": "members", "segment": "member", "description": "Efus members", "created_at": at(0)},
        {
            "id": 2,
            "name": "public",
            "segment": "public",
            "description": "Anyone who signed up",
            "created_at": at(1),
        },
    ]
    for i in range(1, 51):
        first = FIRST[i % len(FIRST)]
        local = f"{first}.{i}" if i % 4 == 0 else f"{first.lower()}.{i}"
        email = f"{local}@{DOMAINS[i % len(DOMAINS)]}"
        status = subscriber_status(i)
        data["subscribers"].append(
            {
                "id": i,
                "email": email,
                "email_key": email.lower(),
                "name": f"{first} O'Brien-{i}" if i % 9 == 0 else f"{first} {i}",
                "organisation": "" if i % 6 == 0 else f"Ville n°{i % 7}",
                "language": ["fr", "en", "pt", "de", "it"][i % 5],
                "status": status.value,
                "created_at": at(10 + i),
                "updated_at": at(1000 + i),
                "soft_score": 0,
                "soft_day": None,
                "soft_bounced_at": None,
            }
        )
        for list_id in (1, 2) if i % 3 == 0 else (1,):
            left = status is SubscriberStatus.UNSUBSCRIBED or (list_id == 1 and i % 11 == 4)
            data["subscriptions"].append(
                {
                    "id": len(data["subscriptions"]) + 1,
                    "subscriber_id": i,
                    "list_id": list_id,
                    "status": (
                        SubscriptionStatus.UNSUBSCRIBED if left else SubscriptionStatus.SUBSCRIBED
                    ).value,
                    "created_at": at(10 + i),
                    "updated_at": at(2000 + i),
                }
            )
            event(
                data,
                i,
                list_id,
                EventKind.SUBSCRIBED,
                Source.IMPORT,
                f"subscribers/members.csv:{i + 1}",
                10 + i,
            )
            if left:
                source = Source.ONE_CLICK if i % 2 else Source.LINK
                event(data, i, list_id, EventKind.UNSUBSCRIBED, source, "dispatch 1", 3000 + i)
        if status is SubscriberStatus.BOUNCED:
            event(
                data,
                i,
                None,
                EventKind.BOUNCED,
                Source.BOUNCE,
                f"550 5.1.1 <{email}>: user unknown",
                4000 + i,
            )
        if status is SubscriberStatus.COMPLAINED:
            event(data, i, None, EventKind.COMPLAINED, Source.MANUAL, "reported as spam, by Zoë", 4000 + i)
    event(data, 3, 1, EventKind.RESUBSCRIBED, Source.MANUAL, "asked at the congress «je reviens»", 5000)

    dispatch = {
        "segment": "member",
        "preheader": "Agenda, news — et plus",
        "html": "<!doctype html><p>Bonjour {{name}}, ça va ? — «Efus»</p>" + "<td>x</td>" * 500,
        "text": "Bonjour {{name}},\n\n— Efus\n",
        "tokens": '{"{{name}}": "name", "{{unsubscribe}}": "unsubscribe_url"}',
        "greeting_fallback": "Chère lectrice, cher lecteur",
        "from_name": "Efus – Zoë's newsletter",
        "from_address": "newsletter@efus.example",
        "reply_to": "team@efus.example",
        # Sent before mailout recorded the signing identity and the envelope sender (0007).
        "signing": None,
        "envelope_sender": None,
        # Written before mailout froze a variant per language (0010): its one variant.
        "language": None,
        # Written before scheduling (0012): started when written, by nobody recorded, on [smtp].
        "scheduled_at": None,
        "cancelled_at": None,
        "missed_at": None,
        "created_by": "",
        "route": "",
        "route_changes": None,
    }
    data["dispatches"] = [
        {
            **dispatch,
            "id": 1,
            "key": "3f2a9c0d1e4b5a6978812233445566aa",
            "issue": "2019-01",
            "list_id": 1,
            "generation": 1,
            "subject": "Efus newsletter — January 2019",
            "total": 40,
            "paused_reason": "",
            "created_at": at(6000),
            "finished_at": at(6030),
        },
        {
            **dispatch,
            "id": 2,
            "key": "77aa9c0d1e4b5a6978812233445566bb",
            "issue": "2019-02",
            "list_id": 2,
            "generation": 1,
            "segment": "public",
            "subject": "Efus newsletter — February 2019",
            "total": 10,
            "paused_reason": "3 messages refused with 5.7.1 (policy): check SPF and DKIM, then run send again",
            "created_at": at(9000),
            "finished_at": None,
        },
        {
            # The same issue to the same list once more (`send --again`): its second generation.
            **dispatch,
            "id": 3,
            "key": "c0ffee0d1e4b5a6978812233445566cc",
            "issue": "2019-01",
            "list_id": 1,
            "generation": 2,
            "subject": "Efus newsletter — January 2019",
            "total": 0,
            "paused_reason": "",
            "created_at": at(9600),
            "finished_at": at(9601),
        },
    ]
    for row in data["dispatches"]:
        # 0012: a dispatch written before it could send from the moment it was written.
        row["started_at"] = row["created_at"]
    states = list(DeliveryStatus)
    recipients = [(1, i) for i in range(1, 41)] + [(2, i) for i in range(3, 31, 3)]
    for n, (dispatch_id, i) in enumerate(recipients, start=1):
        state = states[n % len(states)]
        data["deliveries"].append(
            {
                "id": n,
                "dispatch_id": dispatch_id,
                "subscriber_id": i,
                "email": data["subscribers"][i - 1]["email"],
                "name": data["subscribers"][i - 1]["name"],
                "status": state.value,
                "worker": f"host-a:4744:{n % 2}" if state is not DeliveryStatus.QUEUED else "",
                "attempts": n % 3,
                "next_attempt_at": at(9100 + n) if state is DeliveryStatus.DEFERRED else None,
                "reply": f"250 2.0.0 Ok: queued as {n:08X}" if state is DeliveryStatus.SENT else "",
                "updated_at": at(9000 + n),
                "envelope_sender": None,
                "language": None,
                # 0012: the route is recorded from then on.
                "route": None,
            }
        )
    # Only at the newest schema (the table is new in 0010): dispatch 2's French variant.
    data["dispatch_variants"] = [
        {
            "dispatch_id": 2,
            "language": "fr",
            "subject": "Lettre d'information de l'Efus — février 2019",
            "preheader": "Agenda, actualités — et plus",
            "html": '<!doctype html><html lang="fr"><p>Bonjour {{name}}, ça va ?</p>' + "<td>x</td>" * 500,
            "text": "Bonjour {{name}},\n\n— Efus\n",
            "tokens": '{"{{name}}": "name", "{{unsubscribe}}": "unsubscribe_url"}',
            "greeting_fallback": "Chère lectrice, cher lecteur",
        }
    ]
    data["workers"] = [
        {
            "id": "host-b:5120:ab12",
            "dispatch_id": 2,
            "host": "host-b",
            "pid": 5120,
            "process": "",
            "started_at": at(9000),
            "heartbeat_at": at(9005),
        }
    ]
    data["mail_requests"] = [
        {
            "key": f"<{n}.unsubscribe@mail.example>",
            "sender": data["subscribers"][n]["email"],
            "outcome": outcome,
            "detail": detail,
            "created_at": at(9500 + n),
        }
        for n, (outcome, detail) in enumerate(
            [
                ("unsubscribed", "from members"),
                ("unknown-address", ""),
                ("unsubscribed", "Subject: désabonnement"),
            ]
        )
    ]
    data["handled_reports"] = [
        {
            "id": 1,
            "message_id": "<dsn.1@mx.lisboa.example>",
            "sha256": "ab" * 32,
            "kind": "dsn",
            "matched_by": "verp",
            "settled": True,
            "summary": "dsn: 1 bounced",
            "processed_at": at(9700),
        },
        {
            "id": 2,
            "message_id": None,
            "sha256": "cd" * 32,
            "kind": "autoreply",
            "matched_by": "none",
            "settled": False,
            "summary": "autoreply: Abwesenheitsnotiz — «bin weg»",
            "processed_at": at(9701),
        },
    ]
    data["report_recipients"] = [
        {
            "id": 1,
            "report_id": 1,
            "subscriber_id": 5,
            "dispatch_id": 1,
            "delivery_id": 5,
            "list_id": 1,
            "address": data["subscribers"][4]["email"],
            "outcome": "permanent",
            "status": "5.1.1",
            "diagnostic": "550 5.1.1 user unknown",
            "matched_by": "verp",
            "action": "bounced",
            "note": "",
        }
    ]
    # Only at the newest schema (the tables are new in 0011).
    consent = "Oui, envoyez-moi la lettre d'information de l'Efus. «Je peux me désabonner»."
    data["consent_texts"] = [
        {"sha256": "e3" * 32, "language": "fr", "text": consent, "created_at": at(9800)},
    ]
    data["signups"] = [
        {
            "id": 1,
            "email": "Maëlle.pending@ville-lyon.example",
            "email_key": "maëlle.pending@ville-lyon.example",
            "name": "Maëlle Pending",
            "language": "fr",
            "lists": "public",
            "page": "/subscribe/public",
            "consent_sha256": "e3" * 32,
            "ip": None,
            "nonce": 2**62 + 12345,
            "created_at": at(9801),
            "sent_at": at(9801.5),
            "sends": 1,
            "reply": "250 2.0.0 Ok: queued as 4F2A",
        }
    ]
    # Only at the newest schema (the tables are new in 0012).
    data["approvals"] = [
        {
            "id": 1,
            "issue": "2019-02",
            "list_id": 2,
            "dispatch_id": 2,
            "approved_by": "Zoë Dupont <zoe@efus.example>",
            "approved_at": at(8990),
            "variants": '{"en": "' + "ab" * 32 + '", "fr": "' + "cd" * 32 + '"}',
        }
    ]
    data["routes"] = [{"name": "m365", "created_at": at(9000)}]
    data["route_usage"] = [
        {"route": "m365", "unit": "minute", "bucket": 29_000_000 + n, "used": 30 - n} for n in range(3)
    ] + [{"route": "m365", "unit": "day", "bucket": 1_200_000, "used": 9812}]
    data["erasures"] = [
        {
            "id": 1,
            "address_hash": "9a" * 32,
            "subscriber_id": 50,
            "erased_at": at(9900),
            "erased_by": "Zoë <zoe@efus.example>",
        }
    ]
    return data


def event(
    data: dict[str, list[dict[str, Any]]],
    subscriber_id: int,
    list_id: int | None,
    kind: EventKind,
    source: Source,
    detail: str,
    minutes: float,
) -> None:
    events = data["consent_events"]
    events.append(
        {
            "id": len(events) + 1,
            "subscriber_id": subscriber_id,
            "list_id": list_id,
            "kind": kind.value,
            "source": source.value,
            "detail": detail,
            "created_at": at(minutes),
            # Added by 0011, for confirmed sign-ups: none before it.
            "requested_at": None,
            "page": "",
            "consent_sha256": None,
            "ip": None,
        }
    )


def insert(connection: sa.Connection, table_name: str, records: list[dict[str, Any]]) -> None:
    """Write ``records`` with a plain INSERT of exactly the columns the table has at this schema."""
    table = sa.Table(table_name, sa.MetaData(), autoload_with=connection)
    names = [column.name for column in table.columns]
    missing = [name for name in names if name not in records[0]]
    assert not missing, f"the test rows of {table_name} lack {missing}: add them to rows()"
    quote = connection.dialect.identifier_preparer.quote
    # The names come from this module and the reflected table, never from outside.
    columns, values = ", ".join(quote(n) for n in names), ", ".join(":" + n for n in names)
    sql = f"INSERT INTO {table_name} ({columns}) VALUES ({values})"  # noqa: S608
    statement = sa.text(sql).bindparams(*(sa.bindparam(n, type_=table.c[n].type) for n in names))
    connection.execute(statement, [{n: record[n] for n in names} for record in records])


def fill(connection: sa.Connection, data: dict[str, list[dict[str, Any]]]) -> None:
    """Write the rows of every table the schema has at this revision (for tests of upgraded databases).

    On PostgreSQL the id sequences then go on after the rows, as after real use.
    """
    held = set(sa.inspect(connection).get_table_names())
    for name in TABLES:
        if name not in held:
            continue
        insert(connection, name, data[name])
        if connection.dialect.name == "postgresql" and "id" in data[name][0] and name != "workers":
            # The names come from this module, never from outside.
            connection.exec_driver_sql(
                f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), (SELECT max(id) FROM {name}))"  # noqa: S608
            )


def normalise(value: Any) -> Any:
    # PostgreSQL gives back aware datetimes, SQLite naive ones in UTC (as mailout writes them).
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def contents(engine: sa.Engine) -> dict[str, list[dict[str, Any]]]:
    """Return every row of every table, as column -> value, in primary-key order."""
    found: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as connection:
        present = set(sa.inspect(connection).get_table_names())
        for name in TABLES:
            if name not in present:
                continue
            table = sa.Table(name, sa.MetaData(), autoload_with=connection)
            query = sa.select(table).order_by(*table.primary_key.columns)
            found[name] = [
                {key: normalise(value) for key, value in row.items()}
                for row in connection.execute(query).mappings()
            ]
    return found


def expected(data: dict[str, list[dict[str, Any]]], tables: set[str]) -> dict[str, list[dict[str, Any]]]:
    return {
        name: [{key: normalise(value) for key, value in row.items()} for row in data[name]]
        for name in TABLES
        if name in tables
    }


def table_names(engine: sa.Engine) -> set[str]:
    with engine.connect() as connection:
        return set(sa.inspect(connection).get_table_names())


@pytest.mark.parametrize("revision", EARLIER, ids=lambda r: f"from-{r}")
def test_upgrade_keeps_every_row_of_every_table(empty_database_url: str, revision: str) -> None:
    url = empty_database_url
    upgrade(url, revision)
    engine = make_engine(url)
    data = rows()
    try:
        held = table_names(engine) & set(TABLES)
        with engine.begin() as connection:
            for name in TABLES:
                if name in held:
                    insert(connection, name, data[name])
        before = {name: len(records) for name, records in contents(engine).items()}
        assert before == {name: len(data[name]) for name in held}, "the rows went in"

        assert upgrade(url) == (revision, head_revision())

        after = contents(engine)
        assert {name: len(after[name]) for name in held} == before, "row counts before -> after"
        for name, records in expected(data, held).items():
            for row in after[name]:
                unknown = set(row) - set(records[0])
                assert not unknown, f"{name}.{unknown} is new at {head_revision()}: add its default to rows()"
            assert after[name] == records, f"the rows of {name} changed"
    finally:
        engine.dispose()


def test_sqlite_foreign_keys_are_on_again_after_an_upgrade(tmp_path: Any) -> None:
    path = tmp_path / "fk.db"
    url = f"sqlite:///{path}"
    upgrade(url, EARLIER[0])
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    finally:
        engine.dispose()


def test_sqlite_upgrade_refuses_rows_that_refer_to_missing_rows(tmp_path: Any) -> None:
    path = tmp_path / "orphans.db"
    url = f"sqlite:///{path}"
    upgrade(url, "0002")
    data = rows()
    engine = make_engine(url)
    with engine.begin() as connection:
        for name in ("lists", "subscribers", "subscriptions", "consent_events"):
            insert(connection, name, data[name])
    engine.dispose()
    # Written as a tool with foreign keys off (sqlite3's shell) would: a subscriber gone, its rows left.
    with sqlite3.connect(path) as raw:
        raw.execute("DELETE FROM subscribers WHERE id = 12")
    raw.close()
    engine = make_engine(url)
    try:
        before = contents(engine)
        with pytest.raises(DatabaseError) as caught:
            upgrade(url)
        message = str(caught.value)
        left = ", ".join(str(s["id"]) for s in data["subscriptions"] if s["subscriber_id"] == 12)
        assert f"subscriptions rows {left} (no such subscribers row)" in message
        assert "consent_events rows" in message and "nothing was changed" in message
        assert current_revision(engine) == "0002", "the upgrade was rolled back"
        assert contents(engine) == before
    finally:
        engine.dispose()


def test_upgrade_refuses_a_database_made_by_a_newer_mailout(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(DatabaseError, match=r"at schema 9999, made by a newer mailout: upgrade mailout"):
        upgrade(url)


ON = SubscriptionStatus.SUBSCRIBED.value
OFF = SubscriptionStatus.UNSUBSCRIBED.value
CASE_CLASH = [
    {"id": 3, "email": "Ann@X.org", "email_key": "ann@x.org", "name": "Ann", "status": ON},
    {"id": 5, "email": "bob@x.org", "email_key": "bob@x.org", "name": "Bob", "status": ON},
    {"id": 7, "email": "ann@x.org", "email_key": "ann@x.org", "name": "ann", "status": ON},
]


def fill_case_clash(url: str) -> None:
    """At schema 0002: Ann@X.org (3) is on both lists; ann@x.org (7) left `public` and got dispatch 1."""
    data = rows()
    people = [
        {**data["subscribers"][0], **person, "organisation": "X", "language": "en"} for person in CASE_CLASH
    ]
    subscriptions = [(1, 3, 1, ON), (2, 3, 2, ON), (3, 7, 2, OFF), (4, 5, 1, ON)]
    engine = make_engine(url)
    with engine.begin() as connection:
        insert(connection, "lists", data["lists"])
        insert(connection, "subscribers", people)
        insert(
            connection,
            "subscriptions",
            [
                {**data["subscriptions"][0], "id": n, "subscriber_id": s, "list_id": lst, "status": status}
                for n, s, lst, status in subscriptions
            ],
        )
        subscribed, unsubscribed = EventKind.SUBSCRIBED.value, EventKind.UNSUBSCRIBED.value
        events = [
            (1, 3, 1, subscribed),
            (2, 3, 2, subscribed),
            (3, 7, 2, subscribed),
            (4, 7, 2, unsubscribed),
        ]
        insert(
            connection,
            "consent_events",
            [
                {**data["consent_events"][0], "id": n, "subscriber_id": s, "list_id": lst, "kind": kind}
                for n, s, lst, kind in events
            ],
        )
        insert(connection, "dispatches", data["dispatches"][:1])
        insert(
            connection,
            "deliveries",
            [{**data["deliveries"][0], "id": 1, "dispatch_id": 1, "subscriber_id": 7, "email": "ann@x.org"}],
        )
    engine.dispose()


def recipe() -> str:
    """Return the SQL of docs/database.md that folds subscriber 7 into subscriber 3."""
    text = (REPO / "docs" / "database.md").read_text(encoding="utf-8")
    section = text.split("## Addresses that differ only in case", 1)[1]
    found = re.search(r"```sql\n(.*?)```", section, re.S)
    assert found, "docs/database.md shows the SQL"
    return found.group(1)


def run_sql(url: str, script: str) -> None:
    """Run ``script`` as the user would, in sqlite3's shell or psql: the driver, no mailout."""
    address = make_url(url)
    if address.get_backend_name() == "sqlite":
        assert address.database
        with sqlite3.connect(address.database, isolation_level=None) as raw:
            raw.executescript(script)
        raw.close()
        return
    plain = address.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as raw:
        raw.execute(script.encode())


def test_upgrade_names_addresses_that_differ_only_in_case(
    workspace: Any, empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = empty_database_url
    upgrade(url, "0002")
    fill_case_clash(url)
    engine = make_engine(url)
    before = contents(engine)
    monkeypatch.setenv("MAILOUT_DATABASE_URL", url)

    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), "a clean exit, not an exception"
    assert "Traceback" not in result.output
    errors = result.stderr.splitlines()
    assert len(errors) == 1, errors
    assert "Ann@X.org (subscriber 3) and ann@x.org (subscriber 7)" in errors[0]
    assert "bob@x.org" not in errors[0]
    assert "docs/database.md" in errors[0] and "nothing was changed" in errors[0]
    assert current_revision(engine) == "0002"
    assert contents(engine) == before, "nothing changed"

    # What the message says to do works: the documented SQL, then the upgrade.
    run_sql(url, recipe())
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert current_revision(engine) == head_revision()
    after = contents(engine)
    engine.dispose()
    assert [p["email"] for p in after["subscribers"]] == ["Ann@X.org", "bob@x.org"]
    lists = {(s["subscriber_id"], s["list_id"]): s["status"] for s in after["subscriptions"]}
    assert lists == {(3, 1): ON, (3, 2): OFF, (5, 1): ON}, "who left stays left"
    assert [(e["subscriber_id"], e["kind"]) for e in after["consent_events"]] == [
        (3, EventKind.SUBSCRIBED),
        (3, EventKind.SUBSCRIBED),
        (3, EventKind.SUBSCRIBED),
        (3, EventKind.UNSUBSCRIBED),
    ], "the whole history is kept"
    assert [(d["subscriber_id"], d["email"]) for d in after["deliveries"]] == [(3, "ann@x.org")]


def test_upgrade_to_0010_makes_every_stored_language_canonical(empty_database_url: str) -> None:
    url = empty_database_url
    upgrade(url, "0009")
    data = rows()
    # As mailout stored them before 0010 (lower case, "_" made "-"), and as another tool might.
    stored = ["fr", "fr-be", "pt-br", "FR", "en_GB", "zh-hant-tw", "xx", "fr-a1", "", "de"]
    people = [{**p, "language": stored[n % len(stored)]} for n, p in enumerate(data["subscribers"])]
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            insert(connection, "lists", data["lists"])
            insert(connection, "subscribers", people)
        upgrade(url)
        after = {row["id"]: row for row in contents(engine)["subscribers"]}
    finally:
        engine.dispose()
    wanted = {
        "fr": "fr",
        "fr-be": "fr-BE",
        "pt-br": "pt-BR",
        "FR": "fr",
        "en_GB": "en-GB",
        "zh-hant-tw": "zh-Hant-TW",
        # No language mailout knows (xx), or not well formed (a region of one letter and a digit):
        # emptied, read in the default language as before.
        "xx": "",
        "fr-a1": "",
        "": "",
        "de": "de",
    }
    assert {after[p["id"]]["language"] for p in people} == set(wanted.values())
    for person in people:
        row = after[person["id"]]
        assert row["language"] == wanted[person["language"]], person
        # Nothing else of the row changed, not even its time of update.
        assert {k: v for k, v in row.items() if k != "language"} == {
            k: normalise(v) for k, v in person.items() if k != "language"
        }
