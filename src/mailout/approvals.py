"""Approvals: a second person's yes to an issue for a list, and the check before a dispatch starts.

With ``sending.require_approval``, a dispatch starts (now, or at its scheduled instant)
only when an approval by someone other than its writer carries the SHA-256 of each of
its frozen variants, exactly. Owns the ``approvals`` table.

To be written (issue 16, helper B): ``digest``, ``approve``, ``require``, ``state``.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from .config import Settings
from .errors import MailoutError
from .models import Dispatch


class NotApproved(MailoutError):
    """A dispatch that needs an approval has none that matches what it would send."""


def require(session: Session, settings: Settings, dispatch: Dispatch) -> None:
    # placeholder, helper B writes it: raises NotApproved unless an approval matches.
    return None
