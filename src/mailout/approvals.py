"""Approvals: a second person's yes to an issue for a list, and the check before a dispatch starts.

With ``sending.require_approval``, a dispatch starts (now, or at its scheduled instant)
only when an approval by someone other than its writer carries the SHA-256 of each of
its frozen variants, exactly. Owns the ``approvals`` table.

An approval is of what the readers will see: ``digest`` hashes each variant's subject,
preheader, HTML, text, placeholders and greeting fallback (``canonical``). Given while a
dispatch waits (scheduled, or awaiting approval), it approves that dispatch's frozen
variants (``dispatch_id`` set); given before any send, it records the variants the issue
renders to now (``dispatch_id`` NULL), and the dispatch written later must match them.
An approval of one dispatch never approves another: ``send --again`` needs its own
(or one given since the previous dispatch was written).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, func, or_, select
from sqlalchemy.orm import Session

from . import outbox
from . import subscribers as people
from .config import Settings
from .db import reader, transaction
from .errors import MailoutError
from .issues import Issue
from .models import Approval, Dispatch, MailingList, utcnow
from .render import Slots, Variant
from .segments import Segment

#: The version of ``canonical``'s layout, hashed with it: a later layout never matches an older digest.
FORMAT = "mailout-approval-1"


class NotApproved(MailoutError):
    """A dispatch that needs an approval has none that matches what it would send."""


class ApprovalRefused(MailoutError):
    """``mailout approve`` cannot record this approval: its own writer, or not what goes out."""


@dataclass(frozen=True)
class Approved:
    """What ``approve`` recorded."""

    issue: str
    list_name: str
    approved_by: str
    approved_at: dt.datetime
    #: Language -> SHA-256 (hex) of the variant approved, the issue's default language first.
    digests: dict[str, str]
    #: The dispatch approved, when one was waiting; None: the issue as it renders now.
    dispatch_id: int | None
    #: Languages in which the issue on disk renders differently from the frozen dispatch
    #: (only with ``frozen=True``: the frozen variants were approved all the same).
    differs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApprovalState:
    """The newest approval of an issue for a list, compared with given variants."""

    approved_by: str
    approved_at: dt.datetime
    #: Languages compared whose variant differs from the one approved (or was not approved at all).
    changed: tuple[str, ...]
    dispatch_id: int | None = None

    @property
    def current(self) -> bool:
        """Return whether the variants compared are exactly the ones approved."""
        return not self.changed


@dataclass(frozen=True)
class ListApproval:
    """Whether an issue is approved for one list, as the preview and the test messages say it."""

    list_name: str
    segment: Segment
    state: ApprovalState | None

    def describe(self) -> str:
        """Return "approved by Zoë <zoe@x> at 2019-02-08 16:02 UTC", "not approved" or what changed."""
        return describe(self.state)

    def short(self) -> str:
        """Return "approved by Zoë", "not approved" or "changed since approved: fr", for a subject line."""
        if self.state is None:
            return "not approved"
        if self.state.changed:
            return f"changed since approved: {', '.join(self.state.changed)}"
        return f"approved by {short_name(self.state.approved_by)}"


# --- digests -------------------------------------------------------------------------


def _document(slots: Slots[str]) -> list[object]:
    """Return a document as its pieces with each placeholder as {"field": name} between them."""
    out: list[object] = [slots.pieces[0]]
    for key, piece in zip(slots.keys, slots.pieces[1:], strict=True):
        out += [{"field": key}, piece]
    return out


def canonical(variant: Variant) -> bytes:
    """Return the bytes ``digest`` hashes: everything of ``variant`` a reader sees.

    The placeholders' own names are random per rendering (``render.render_variant``), so
    each stands as the field it is filled with: the same issue rendered twice hashes alike.
    """
    document = {
        "format": FORMAT,
        "subject": variant.subject,
        "preheader": variant.preheader,
        "greeting_fallback": variant.greeting_fallback,
        "html": _document(variant.html_slots),
        "text": _document(variant.text_slots),
    }
    return json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def digest(variants: Mapping[str, Variant]) -> dict[str, str]:
    """Return the SHA-256 (hex) of each variant by language, in the order given."""
    return {language: hashlib.sha256(canonical(v)).hexdigest() for language, v in variants.items()}


def changed(approved: Mapping[str, str], now: Mapping[str, str]) -> tuple[str, ...]:
    """Return the languages whose digest differs, or that one side has and not the other."""
    languages = [*approved, *(lang for lang in now if lang not in approved)]
    return tuple(lang for lang in languages if approved.get(lang) != now.get(lang))


def _stored(approval: Approval) -> dict[str, str]:
    return {str(k): str(v) for k, v in json.loads(approval.variants).items()}


# --- people --------------------------------------------------------------------------

_ADDRESS = re.compile(r"<\s*([^<>\s]+@[^<>\s]+)\s*>\s*$")


def _address(person: str) -> str | None:
    """Return the address in "Name <address>", or the whole string when it is an address alone."""
    found = _ADDRESS.search(person)
    if found:
        return found.group(1).casefold()
    bare = person.strip()
    return bare.casefold() if "@" in bare and not any(c.isspace() or c in "<>" for c in bare) else None


def same_person(one: str, other: str) -> bool:
    """Return whether two names of people may be one person; when in doubt, they are.

    One person signs in several ways: "Zoë Dupont <zoe@x>" from git on a laptop, "zoe"
    (the login) on the server without git, "Zoë Dupont" typed in ``--by``. So two names
    are the same person when their addresses match, or their names do (the part before
    the address, or the whole text), or one is a bare login that is the other's address
    before the "@" (two addresses are never compared that way: info@ of two
    organisations are two people). Case, Unicode composition and runs of spaces do not
    count. "" (a dispatch written before mailout recorded its writer) is nobody's name:
    it is never the same as anyone. For the approval's second pair of eyes, taking two
    people for one only asks for a third.
    """
    mine, theirs = _Identity.of(one), _Identity.of(other)
    if mine is None or theirs is None:
        return False
    return bool(
        (mine.address and mine.address == theirs.address)
        or (mine.names & theirs.names)
        or (mine.login and mine.login == theirs.local)
        or (theirs.login and theirs.login == mine.local)
    )


@dataclass(frozen=True)
class _Identity:
    """The ways one name of a person can be compared (each normalized)."""

    address: str
    local: str
    names: frozenset[str]
    login: str

    @classmethod
    def of(cls, person: str) -> _Identity | None:
        def norm(text: str) -> str:
            return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()

        whole = norm(person)
        if not whole:
            return None
        address = _address(person) or ""
        address = norm(address)
        name = norm(short_name(person))
        names = {name} if name and name != address else set()
        if not address:
            names.add(whole)  # whatever it is ("Zoë (zoe@x)"), the same text is the same person
        login = whole if not address and " " not in whole and "@" not in whole else ""
        return cls(address, address.split("@")[0] if address else "", frozenset(names), login)


def short_name(person: str) -> str:
    """Return "Zoë" for "Zoë <zoe@x>", and the whole string otherwise (one line)."""
    found = _ADDRESS.search(person)
    name = person[: found.start()] if found else person
    return " ".join(name.split()) or " ".join(person.split())


def when(moment: dt.datetime) -> str:
    """Return an approval's time as the messages show it: 2019-02-08 16:02 UTC."""
    return outbox.as_utc(moment).strftime("%Y-%m-%d %H:%M UTC")


def describe(state: ApprovalState | None) -> str:
    """Return what the preview and ``status`` say of an approval state."""
    if state is None:
        return "not approved"
    if state.changed:
        return (
            f"changed since approved: {', '.join(state.changed)}"
            f" ({state.approved_by} approved it at {when(state.approved_at)})"
        )
    return f"approved by {state.approved_by} at {when(state.approved_at)}"


# --- approving -----------------------------------------------------------------------


def _waiting(dispatch: Dispatch | None) -> Dispatch | None:
    """Return ``dispatch`` when it is written and not started: scheduled, missed or awaiting approval."""
    if dispatch is None or dispatch.started_at is not None:
        return None
    if dispatch.cancelled_at is not None or dispatch.finished_at is not None:
        return None
    return dispatch


def approve(
    engine: Engine, settings: Settings, issue: Issue, list_name: str, by: str, *, frozen: bool = False
) -> Approved:
    """Record ``by``'s approval of ``issue`` for ``list_name``; return what was approved.

    When a dispatch of the issue to the list waits (written, not started), its frozen
    variants are approved; if the issue now renders differently, ``ApprovalRefused`` says
    which variants differ, unless ``frozen`` says the frozen ones are meant. Its writer
    cannot approve it. With no dispatch waiting, the variants the issue renders to now are
    approved: the dispatch a later ``send`` writes must be exactly those.
    """
    # dispatching calls ``require``: imported here, where it is needed, not when loaded.
    from .dispatching import variants_for_list

    by = " ".join(by.split())
    if not by:
        raise ApprovalRefused("an approval needs the approver's name: give --by NAME")
    list_settings = settings.mailing_list(list_name)
    # Rendered before the transaction: it takes a while, and holds no lock meanwhile.
    rendered = digest(variants_for_list(settings, issue, list_name))
    with transaction(engine) as session:
        lst = people.ensure_list(session, list_settings)
        # The list's row locked, as a send locks it to write a dispatch: an approval and a
        # send at the same instant see each other's dispatch, or none.
        waiting = _waiting(outbox.find_dispatch(session, issue.slug, lst, lock=True))
        differs: tuple[str, ...] = ()
        if waiting is None:
            if frozen:
                raise ApprovalRefused(
                    f"--frozen approves a dispatch that waits to start; no dispatch of {issue.slug}"
                    f" to '{lst.name}' waits (approve without --frozen: the issue as it is now)"
                )
            digests = rendered
        else:
            if same_person(by, waiting.created_by):
                raise ApprovalRefused(
                    f"{by} wrote dispatch {waiting.id} of {issue.slug} to '{lst.name}': its approval"
                    " must come from someone else (--by NAME, or their own git user)"
                )
            digests = digest(outbox.frozen_variants(session, waiting))
            differs = changed(digests, rendered)
            if differs and not frozen:
                raise ApprovalRefused(
                    f"dispatch {waiting.id} of {issue.slug} to '{lst.name}' was frozen when it was"
                    f" written, and the issue renders differently now: variant {', '.join(differs)}"
                    " differs. What you approve is what goes out: cancel it (`mailout schedule cancel"
                    f" {waiting.id}`) and send again, then approve; or approve what was frozen, unchanged,"
                    " with --frozen"
                )
        approval = Approval(
            issue=issue.slug,
            list_id=lst.id,
            dispatch_id=waiting.id if waiting is not None else None,
            approved_by=by,
            approved_at=utcnow(),
            variants=json.dumps(digests),
        )
        session.add(approval)
        session.flush()
        return Approved(
            issue=issue.slug,
            list_name=lst.name,
            approved_by=by,
            approved_at=outbox.as_utc(approval.approved_at),
            digests=digests,
            dispatch_id=approval.dispatch_id,
            differs=differs,
        )


# --- checking ------------------------------------------------------------------------


def _candidates(session: Session, dispatch: Dispatch) -> list[Approval]:
    """Return the approvals that may approve ``dispatch``, newest first.

    Those of this dispatch, and those given with no dispatch waiting since the previous
    dispatch of the issue to the list was written (none: any): an approval given for the
    first send does not approve ``send --again``.
    """
    previous = session.scalar(
        select(func.max(Dispatch.created_at)).where(
            Dispatch.issue == dispatch.issue,
            Dispatch.list_id == dispatch.list_id,
            Dispatch.generation < dispatch.generation,
        )
    )
    found = session.scalars(
        select(Approval)
        .where(
            Approval.issue == dispatch.issue,
            Approval.list_id == dispatch.list_id,
            or_(Approval.dispatch_id == dispatch.id, Approval.dispatch_id.is_(None)),
        )
        .order_by(Approval.approved_at.desc(), Approval.id.desc())
    ).all()
    return [
        a
        for a in found
        if a.dispatch_id == dispatch.id
        or previous is None
        or outbox.as_utc(a.approved_at) > outbox.as_utc(previous)
    ]


def require(session: Session, settings: Settings, dispatch: Dispatch) -> None:
    """Raise ``NotApproved`` unless the dispatch may start: a no-op without ``sending.require_approval``.

    It may when an approval by someone other than its writer carries exactly the digests
    of its frozen variants. Called in the transaction that starts it.
    """
    if not settings.sending.require_approval:
        return
    _check(session, dispatch)


def verdict(session: Session, dispatch: Dispatch) -> str:
    """Say what ``require`` would decide of the dispatch, for ``status``; "" when nobody approved the issue for its list.

    "approved by Ana on 2019-02-08 16:02 UTC" only when that approval is one ``require``
    accepts (by someone other than the writer, of exactly the frozen variants, for this
    dispatch or its generation); else why not, as ``require`` says it.
    """
    if not _candidates(session, dispatch) and not session.scalar(
        select(func.count())
        .select_from(Approval)
        .where(Approval.issue == dispatch.issue, Approval.list_id == dispatch.list_id)
    ):
        return ""
    try:
        approval = _check(session, dispatch)
    except NotApproved as refused:
        return f"not approved: {refused}"
    return f"approved by {approval.approved_by} on {when(approval.approved_at)}"


def _check(session: Session, dispatch: Dispatch) -> Approval:
    """Return the approval that lets the dispatch start, or raise ``NotApproved`` saying why none does."""
    frozen = digest(outbox.frozen_variants(session, dispatch))
    candidates = _candidates(session, dispatch)
    matching = [a for a in candidates if _stored(a) == frozen]
    for approval in matching:
        if not same_person(approval.approved_by, dispatch.created_by):
            return approval
    list_name = session.scalar(select(MailingList.name).where(MailingList.id == dispatch.list_id))
    what = f"dispatch {dispatch.id} of {dispatch.issue} to '{list_name}'"
    again = f"`mailout approve {dispatch.issue} --list {list_name}` by someone other than its writer"
    if matching:
        raise NotApproved(
            f"{what} is approved by its own writer ({matching[0].approved_by}) only: it needs {again}"
        )
    others = [a for a in candidates if not same_person(a.approved_by, dispatch.created_by)]
    if others:
        newest = others[0]
        differs = changed(_stored(newest), frozen)
        variant = "variant" if len(differs) == 1 else "variants"
        raise NotApproved(
            f"{what}: {variant} {', '.join(differs)} changed since {newest.approved_by} approved it"
            f" at {when(newest.approved_at)}; it needs {again} once more"
        )
    raise NotApproved(f"{what} is not approved: it needs {again}")


def state(
    session: Session, issue: str, list_id: int, variants: Mapping[str, Variant]
) -> ApprovalState | None:
    """Return the newest approval of ``issue`` for the list, compared with ``variants``; None if none.

    ``changed`` names the languages of ``variants`` whose variant was not the one approved.
    """
    newest = session.scalars(
        select(Approval)
        .where(Approval.issue == issue, Approval.list_id == list_id)
        .order_by(Approval.approved_at.desc(), Approval.id.desc())
        .limit(1)
    ).first()
    if newest is None:
        return None
    approved, now = _stored(newest), digest(variants)
    return ApprovalState(
        approved_by=newest.approved_by,
        approved_at=outbox.as_utc(newest.approved_at),
        # Of the languages given only: a test message in French says nothing of English.
        changed=tuple(lang for lang in now if approved.get(lang) != now[lang]),
        dispatch_id=newest.dispatch_id,
    )


def for_lists(
    engine: Engine, settings: Settings, issue: str, variants: Mapping[tuple[Segment, str], Variant]
) -> list[ListApproval]:
    """Return, for each list of the settings, whether ``variants`` (by segment and language) are approved.

    Reads only: a list with no row yet has no approval.
    """
    lists: Sequence[tuple[str, Segment]] = [(entry.name, Segment(entry.segment)) for entry in settings.lists]
    with transaction(reader(engine)) as session:
        ids = dict(
            session.execute(
                select(MailingList.name, MailingList.id).where(MailingList.name.in_([n for n, _ in lists]))
            ).all()
        )
        found = []
        for name, segment in lists:
            mine = {lang: v for (seg, lang), v in variants.items() if seg is segment}
            known = name in ids and mine
            found.append(
                ListApproval(name, segment, state(session, issue, ids[name], mine) if known else None)
            )
    return found
