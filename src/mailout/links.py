"""Every absolute link mailout writes into a message, a page or a command's output.

``Links(settings, signer)`` is the one place that knows the public base URL
(``newsletter.public_base_url``) and the address layout the web app answers;
everything else asks it, one method per kind of link::

    links.archive()                               https://news.example/issues/
    links.issue("2019-01")                        .../issues/2019-01            (view in browser)
    links.member_view("2019-01", person, lst)     .../issues/2019-01?t=<VIEW token>
    links.unsubscribe(person, lst)                .../unsubscribe/<UNSUBSCRIBE token>
    links.unsubscribe_mailto(person, lst)         mailto:unsubscribe@<domain>?subject=unsubscribe%20<token>
    links.unsubscribe_by_mail()                   mailto:unsubscribe@<domain>?subject=unsubscribe
    links.pictures("2019-01")                     .../issues/2019-01/           (prefix of every picture)
    links.picture("2019-01", "images/a.png")      .../issues/2019-01/images/a.png
    links.exported_issue("2019-01")               2019-01/index.html            (in a static export)
    links.preview("2019-01")                      .../preview/2019-01
    links.test_message("2019-01")                 the pseudo links of a test message
    links.preview_sample("2019-01")               the pseudo links of a preview

The send loop asks ``for_messages`` once per dispatch for a ``MessageLinks``
whose prefixes are all computed up front: per message it only signs and joins
strings. Issue names and picture paths are percent-encoded the same way in
every link (a valid issue name, see ``issues.is_slug``, needs no encoding).

A new kind of link is a new method here, never an f-string elsewhere: the
confirmation link of a sign-up, the preference page, and the bounce
(VERP) return address that later features add belong in this class.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple
from urllib.parse import quote

from .config import Settings
from .errors import ConfigError
from .tokens import Purpose, Signer

#: The folder of an issue's pictures under which members-only ones are published.
PRIVATE_PICTURES = "m"


class SampleToken(StrEnum):
    """The pseudo-tokens of test messages and previews: their links unsubscribe nobody."""

    TEST = "test"
    PREVIEW = "preview"


class MessageUrls(NamedTuple):
    """The links filled into one message: its unsubscribe links and its view-in-browser link."""

    unsubscribe: str
    unsubscribe_mailto: str
    view: str


def private_picture_path(name: str, digest: str) -> str:
    """Return where a members-only picture lies among the issue's pictures: ``m/<digest>/<name>``."""
    return f"{PRIVATE_PICTURES}/{digest}/{name}"


class Links:
    """Make every absolute URL, from the settings and (for members' links) the signer.

    ``base_url`` replaces ``newsletter.public_base_url``, for the address a local
    server answers at.
    """

    def __init__(
        self, settings: Settings, signer: Signer | None = None, *, base_url: str | None = None
    ) -> None:
        #: The base URL without its trailing slash; may carry a path (``https://example.org/news``).
        self.base = (base_url or settings.newsletter.public_base_url).rstrip("/")
        #: The domain of the unsubscribe mailbox: the sender's.
        self.mail_domain = settings.sender.address.rpartition("@")[2].lower()
        self.signer = signer
        self._issues = f"{self.base}/issues/"
        self._unsubscribe = f"{self.base}/unsubscribe/"
        self._preview = f"{self.base}/preview/"

    def _signer(self) -> Signer:
        if self.signer is None:
            raise ConfigError("no secret key (MAILOUT_SECRET_KEY): members' links cannot be signed")
        return self.signer

    # -- the archive --------------------------------------------------------------

    def archive(self) -> str:
        """Return the index of past issues."""
        return self._issues

    def issue(self, slug: str) -> str:
        """Return an issue's public page: the "view in browser" link of the public variant."""
        return self._issues + quote(slug, safe="")

    def member_view(self, slug: str, subscriber_id: int, list_id: int) -> str:
        """Return a member's own page of an issue, signed for them and their list."""
        return f"{self.issue(slug)}?t={self._signer().sign(Purpose.VIEW, subscriber_id, list_id)}"

    def pictures(self, slug: str) -> str:
        """Return the prefix of every picture an issue's messages and pages load."""
        return self.issue(slug) + "/"

    def picture(self, slug: str, path: str) -> str:
        """Return a picture's URL from its path in the issue folder (or ``private_picture_path``)."""
        return self.pictures(slug) + quote(path)

    # -- unsubscribe ----------------------------------------------------------------

    def unsubscribe(self, subscriber_id: int, list_id: int) -> str:
        """Return the https unsubscribe link of a subscriber on a list."""
        return self._unsubscribe + self._signer().sign(Purpose.UNSUBSCRIBE, subscriber_id, list_id)

    def unsubscribe_mailto(self, subscriber_id: int, list_id: int) -> str:
        """Return the ``mailto:`` unsubscribe link of a subscriber on a list (``List-Unsubscribe``)."""
        return _mailto(self.mail_domain, self._signer().sign(Purpose.UNSUBSCRIBE, subscriber_id, list_id))

    def unsubscribe_by_mail(self) -> str:
        """Return the public page's unsubscribe link: no one's token, so a message to the mailbox."""
        return f"mailto:unsubscribe@{self.mail_domain}?subject=unsubscribe"

    @staticmethod
    def exported_issue(slug: str) -> str:
        """Return the link from a static export's index to an issue's page, relative to the index."""
        return f"{quote(slug)}/index.html"

    # -- the team's preview and test messages ----------------------------------------

    def preview(self, slug: str | None = None) -> str:
        """Return the team's preview of an issue, or the list of issues to preview."""
        return self._preview if slug is None else self._preview + quote(slug, safe="")

    def test_message(self, slug: str) -> MessageUrls:
        """Return the links of a test message: a sample unsubscribe, and the preview to view it."""
        return self._sample(SampleToken.TEST, self.preview(slug))

    def preview_sample(self, slug: str) -> MessageUrls:
        """Return the links a preview is filled with: a sample unsubscribe, and the issue's page."""
        return self._sample(SampleToken.PREVIEW, self.issue(slug))

    def _sample(self, token: SampleToken, view: str) -> MessageUrls:
        return MessageUrls(self._unsubscribe + token, _mailto(self.mail_domain, token), view)

    # -- the send loop ---------------------------------------------------------------

    def for_messages(
        self, slug: str, list_id: int, *, member: bool, sender: str, language: str = ""
    ) -> MessageLinks:
        """Return the link maker of one dispatch's messages in ``language``, sent from ``sender``.

        (Issue 14: the links are to carry ``language``, so the pages answer in it.)
        """
        return MessageLinks(self, slug, list_id, member=member, domain=sender.rpartition("@")[2].lower())


class MessageLinks:
    """The links of one dispatch's messages, every prefix computed once.

    Called for each recipient: it signs their tokens and joins strings, nothing else.
    """

    __slots__ = ("_list_id", "_mailto", "_member", "_sign", "_unsubscribe", "_view")

    def __init__(self, links: Links, slug: str, list_id: int, *, member: bool, domain: str) -> None:
        self._sign = links._signer().sign
        self._list_id = list_id
        self._member = member
        self._unsubscribe = links._unsubscribe
        self._mailto = _mailto(domain, "")
        self._view = links.issue(slug) + ("?t=" if member else "")

    def __call__(self, subscriber_id: int) -> MessageUrls:
        """Return the links of the message to one subscriber."""
        token = self._sign(Purpose.UNSUBSCRIBE, subscriber_id, self._list_id)
        view = (
            self._view + self._sign(Purpose.VIEW, subscriber_id, self._list_id)
            if self._member
            else self._view
        )
        return MessageUrls(self._unsubscribe + token, self._mailto + token, view)


def _mailto(domain: str, token: str) -> str:
    # A token is base64url and dots (or a sample word): nothing in it needs encoding in a URL.
    return f"mailto:unsubscribe@{domain}?subject=unsubscribe%20{token}"
