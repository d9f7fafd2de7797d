"""A person's data: everything held about them (``export-person``), and erasure that keeps them out.

Erasure (``erase``) removes the address and the name from every table, each
through the table's owner module, and writes a row of ``erasures``: when, by
whom, and a keyed hash of the address (``tokens.Signer.address_hashes``), no
address. ``is_erased`` and ``erased_hashes`` let imports, ``subscribers add``
and the sign-up form keep the person out.

This module owns the ``erasures`` table.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from .models import Erasure
from .tokens import Signer


def is_erased(conn: Connection, signer: Signer, address: str) -> bool:
    """Return whether ``address`` (any case) was erased: a sign-up or an import must keep it out."""
    hashes = signer.address_hashes(address)
    found = conn.execute(select(Erasure.id).where(Erasure.address_hash.in_(hashes)).limit(1)).first()
    return found is not None


def erased_hashes(conn: Connection) -> set[str]:
    """Return every erasure's hash, for checking many addresses at once (an import)."""
    return set(conn.execute(select(Erasure.address_hash)).scalars())
