"""The envelope sender (SMTP ``MAIL FROM``) of every message mailout sends.

The envelope sender is where receiving servers send their bounce reports; the
``From`` header, what a reader sees, stays ``sender.address``. Every path that
sends asks ``envelope_sender`` and nothing else: ``mailout test``, a dispatch's
send loop (``mailer``) and so ``mailout worker``; the local outbox writes the
same address as the ``Return-Path`` line of its ``.eml`` files.

It is a function of the settings, the dispatch and the delivery, though today
only ``sender.return_path`` (or ``sender.address`` without it) decides: an
address that names the dispatch and the delivery (VERP, for reading bounces)
changes this one function.
"""

from __future__ import annotations

from .config import Settings


def envelope_sender(
    settings: Settings, dispatch_id: int | None = None, delivery_id: int | None = None
) -> str:
    """Return the ``MAIL FROM`` address of a message (of a test when ``dispatch_id`` is None).

    Without ``delivery_id``: the address the dispatch's messages share, as recorded with
    the dispatch and shown by ``mailout status``.
    """
    return settings.sender.envelope
