"""Every absolute link mailout writes into a message, a page or a command's output.

``Links(settings, signer)`` is the one place that knows the public base URL
(``newsletter.public_base_url``) and the address layout the web app answers;
everything else asks it, one method per kind of link::

    links.archive()                               https://news.example/issues/
    links.archive("fr")                           .../issues/?lang=fr           (the index in French)
    links.issue("2019-01")                        .../issues/2019-01            (the default language)
    links.issue("2019-01", "fr")                  .../issues/2019-01/fr         (view in browser, French)
    links.member_view("2019-01", person, lst)     .../issues/2019-01?t=<VIEW token>
    links.member_view("2019-01", p, l, "fr")      .../issues/2019-01/fr?t=<VIEW token>
    links.unsubscribe(person, lst)                .../unsubscribe/<UNSUBSCRIBE token>
    links.unsubscribe(person, lst, "fr")          .../unsubscribe/<UNSUBSCRIBE token>?lang=fr
    links.unsubscribe_mailto(person, lst)         mailto:unsubscribe@<domain>?subject=unsubscribe%20<token>
    links.unsubscribe_by_mail()                   mailto:unsubscribe@<domain>?subject=unsubscribe
    links.pictures("2019-01")                     .../issues/2019-01/           (prefix of every picture)
    links.picture("2019-01", "images/a.png")      .../issues/2019-01/images/a.png
    links.exported_issue("2019-01")               2019-01/index.html            (in a static export)
    links.exported_issue("2019-01", "fr")         2019-01/fr/index.html
    links.preview("2019-01")                      .../preview/2019-01
    links.test_message("2019-01")                 the pseudo links of a test message (no one's token)
    links.preview_sample("2019-01")               the pseudo links of a preview

The send loop asks ``for_messages`` once per dispatch for a ``MessageLinks``
whose prefixes are all computed up front: per message it only signs and joins
strings. Issue names and picture paths are percent-encoded the same way in
every link (a valid issue name, see ``issues.is_slug``, needs no encoding).

Languages: an issue's page in one language is a document of its own, at its own
address (``/issues/<slug>/<language>``, for ``hreflang``); a language tag has no
dot, so it never names one of the issue's pictures (``/issues/<slug>/<path>``,
always with a file suffix). The unsubscribe pages are the same action whatever
the language, so the language is a parameter there (``?lang=``), after the
token: the token, the RFC 8058 POST to the same address and the ``mailto:``
stay what they were. The web app checks the language against those it has and
falls back to the default, so a changed parameter changes only the page's words.

Sign-up and preferences::

    links.signup_form()                           .../subscribe
    links.signup_form("public", "fr")             .../subscribe/public?lang=fr
    links.confirm(signup_id, nonce, "fr")         .../subscribe/confirm/<CONFIRM token>?lang=fr
    links.preferences(person, lst, "fr")          .../preferences/<PREFERENCES token>?lang=fr

A new kind of link is a new method here, never an f-string elsewhere.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple
from urllib.parse import quote

from .config import Settings
from .errors import ConfigError
from .languages import canonical
from .tokens import Purpose, Signer

#: The folder of an issue's pictures under which members-only ones are published.
PRIVATE_PICTURES = "m"


class SampleToken(StrEnum):
    """The pseudo-tokens of test messages and previews: their links unsubscribe nobody."""

    TEST = "test"
    PREVIEW = "preview"


class MessageUrls(NamedTuple):
    """The links filled into one message: unsubscribe, view in browser, and the preference page."""

    unsubscribe: str
    unsubscribe_mailto: str
    view: str
    preferences: str


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
        self._subscribe = f"{self.base}/subscribe"
        self._preferences = f"{self.base}/preferences/"

    def _signer(self) -> Signer:
        if self.signer is None:
            raise ConfigError("no secret key (MAILOUT_SECRET_KEY): members' links cannot be signed")
        return self.signer

    # -- the archive --------------------------------------------------------------

    def archive(self, language: str = "") -> str:
        """Return the index of past issues (in ``language``, the visitor's choice, if given)."""
        return self._issues + _lang_query(language)

    def issue(self, slug: str, language: str = "") -> str:
        """Return an issue's public page: the "view in browser" link of the public variant.

        Without ``language``, the page in the issue's default language.
        """
        return self._issues + quote(slug, safe="") + _lang_path(language)

    def member_view(self, slug: str, subscriber_id: int, list_id: int, language: str = "") -> str:
        """Return a member's own page of an issue, signed for them and their list."""
        token = self._signer().sign(Purpose.VIEW, subscriber_id, list_id)
        return f"{self.issue(slug, language)}?t={token}"

    def pictures(self, slug: str) -> str:
        """Return the prefix of every picture an issue's messages and pages load (every language's)."""
        return self._issues + quote(slug, safe="") + "/"

    def picture(self, slug: str, path: str) -> str:
        """Return a picture's URL from its path in the issue folder (or ``private_picture_path``)."""
        return self.pictures(slug) + quote(path)

    # -- unsubscribe ----------------------------------------------------------------

    def unsubscribe(self, subscriber_id: int, list_id: int, language: str = "") -> str:
        """Return the https unsubscribe link of a subscriber on a list; its pages in ``language``."""
        token = self._signer().sign(Purpose.UNSUBSCRIBE, subscriber_id, list_id)
        return self._unsubscribe + token + _lang_query(language)

    def unsubscribe_mailto(self, subscriber_id: int, list_id: int) -> str:
        """Return the ``mailto:`` unsubscribe link of a subscriber on a list (``List-Unsubscribe``)."""
        return _mailto(self.mail_domain, self._signer().sign(Purpose.UNSUBSCRIBE, subscriber_id, list_id))

    def unsubscribe_by_mail(self) -> str:
        """Return the public page's unsubscribe link: no one's token, so a message to the mailbox."""
        return f"mailto:unsubscribe@{self.mail_domain}?subject=unsubscribe"

    # -- sign-up and preferences ------------------------------------------------------

    def signup_form(self, list_name: str = "", language: str = "") -> str:
        """Return the sign-up form (for one list, if named): the page, and where it posts."""
        path = self._subscribe + ("/" + quote(list_name, safe="") if list_name else "")
        return path + _lang_query(language)

    def confirm(self, signup_id: int, nonce: int, language: str = "") -> str:
        """Return a sign-up's confirmation link (double opt-in), its pages in ``language``."""
        token = self._signer().sign(Purpose.CONFIRM, signup_id, nonce)
        return f"{self._subscribe}/confirm/{token}{_lang_query(language)}"

    def preferences(self, subscriber_id: int, list_id: int, language: str = "") -> str:
        """Return a reader's preference page (name, language, lists, unsubscribe from all)."""
        token = self._signer().sign(Purpose.PREFERENCES, subscriber_id, list_id)
        return self._preferences + token + _lang_query(language)

    @staticmethod
    def exported_issue(slug: str, language: str = "") -> str:
        """Return the link from a static export's index to an issue's page, relative to the index."""
        return f"{quote(slug)}{_lang_path(language)}/index.html"

    # -- the team's preview and test messages ----------------------------------------

    def preview(self, slug: str | None = None) -> str:
        """Return the team's preview of an issue, or the list of issues to preview."""
        return self._preview if slug is None else self._preview + quote(slug, safe="")

    def test_message(self, slug: str, language: str = "") -> MessageUrls:
        """Return the links of a test message: sample unsubscribe and preferences, the preview to view it."""
        return self._sample(SampleToken.TEST, self.preview(slug), language)

    def preview_sample(self, slug: str, language: str = "") -> MessageUrls:
        """Return the links a preview is filled with: sample unsubscribe and preferences, the issue's page."""
        return self._sample(SampleToken.PREVIEW, self.issue(slug, language), language)

    def _sample(self, token: SampleToken, view: str, language: str) -> MessageUrls:
        query = _lang_query(language)
        return MessageUrls(
            self._unsubscribe + token + query,
            _mailto(self.mail_domain, token),
            view,
            self._preferences + token + query,
        )

    # -- the send loop ---------------------------------------------------------------

    def for_messages(
        self, slug: str, list_id: int, *, member: bool, sender: str, language: str = ""
    ) -> MessageLinks:
        """Return the link maker of one dispatch's messages in ``language``, sent from ``sender``.

        The unsubscribe link and the view-in-browser link carry ``language``, so that the
        pages they open answer in it; the ``mailto:`` does not change.
        """
        return MessageLinks(
            self, slug, list_id, member=member, domain=sender.rpartition("@")[2].lower(), language=language
        )


class MessageLinks:
    """The links of one dispatch's messages, every prefix computed once.

    Called for each recipient: it signs their tokens and joins strings, nothing else.
    """

    __slots__ = (
        "_language",
        "_list_id",
        "_mailto",
        "_member",
        "_preferences",
        "_sign",
        "_unsubscribe",
        "_view",
    )

    def __init__(
        self, links: Links, slug: str, list_id: int, *, member: bool, domain: str, language: str = ""
    ) -> None:
        self._sign = links._signer().sign
        self._list_id = list_id
        self._member = member
        self._unsubscribe = links._unsubscribe
        self._preferences = links._preferences
        self._language = _lang_query(language)
        self._mailto = _mailto(domain, "")
        self._view = links.issue(slug, language) + ("?t=" if member else "")

    def __call__(self, subscriber_id: int) -> MessageUrls:
        """Return the links of the message to one subscriber."""
        token = self._sign(Purpose.UNSUBSCRIBE, subscriber_id, self._list_id)
        view = (
            self._view + self._sign(Purpose.VIEW, subscriber_id, self._list_id)
            if self._member
            else self._view
        )
        preferences = self._sign(Purpose.PREFERENCES, subscriber_id, self._list_id)
        return MessageUrls(
            self._unsubscribe + token + self._language,
            self._mailto + token,
            view,
            self._preferences + preferences + self._language,
        )


def _checked(language: str) -> str:
    """Return ``language`` as links write it: its canonical tag (nothing in it needs encoding)."""
    tag = canonical(language)
    if tag is None:
        raise ValueError(f"not a language tag: {language!r}")
    return tag


def _lang_path(language: str) -> str:
    return f"/{_checked(language)}" if language else ""


def _lang_query(language: str) -> str:
    return f"?lang={_checked(language)}" if language else ""


def _mailto(domain: str, token: str) -> str:
    # A token is base64url and dots (or a sample word): nothing in it needs encoding in a URL.
    return f"mailto:unsubscribe@{domain}?subject=unsubscribe%20{token}"
