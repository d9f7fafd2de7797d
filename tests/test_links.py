"""Every absolute link, from ``links.Links``: unit tests of each kind, then the links of real messages.

The end-to-end tests send real messages to the recording SMTP server, read the
links out of them, compare each with what ``Links`` makes, and follow it
through the web app: a link that ``Links`` makes but the app does not answer,
or that a message carries but ``Links`` does not make, fails here.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from mailout.config import Settings, load_settings
from mailout.db import make_engine, transaction
from mailout.errors import ConfigError
from mailout.issues import is_slug, slug_problem
from mailout.links import Links, MessageUrls, SampleToken, private_picture_path
from mailout.models import MailingList, Subscriber
from mailout.tokens import Claim, Purpose, Signer
from mailout.web import create_app
from tests.conftest import EXAMPLE_ISSUE, SECRET_KEY
from tests.smtpserver import SMTPServer
from tests.test_web import MEMBERS, PUBLIC, import_list, run, unsubscribe_url, view_url

SIGNER = Signer([SECRET_KEY])


def settings_for(base_url: str, sender: str = "newsletter@Efus.Example") -> Settings:
    return load_settings(
        Path("/nonexistent"),
        env={},
        overrides={"newsletter.public_base_url": base_url, "sender.address": sender},
        require_file=False,
    )


def token_of(url: str, prefix: str) -> str:
    assert url.startswith(prefix), url
    return url.removeprefix(prefix)


# --- each kind of link -------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "base"),
    [
        ("https://news.example", "https://news.example"),
        ("https://news.example/", "https://news.example"),
        ("https://example.org/news/", "https://example.org/news"),
        ("https://example.org/news", "https://example.org/news"),
        ("http://127.0.0.1:8025//", "http://127.0.0.1:8025"),
    ],
)
def test_public_links_under_any_base_url(configured: str, base: str) -> None:
    links = Links(settings_for(configured))
    assert links.base == base
    assert links.archive() == f"{base}/issues/"
    assert links.issue("2019-01") == f"{base}/issues/2019-01"
    assert links.pictures("2019-01") == f"{base}/issues/2019-01/"
    assert links.picture("2019-01", "images/logo.png") == f"{base}/issues/2019-01/images/logo.png"
    assert links.preview() == f"{base}/preview/"
    assert links.preview("2019-01") == f"{base}/preview/2019-01"
    # The base's own path is kept: nothing is resolved against it.
    assert urlsplit(links.issue("2019-01")).path == urlsplit(base).path + "/issues/2019-01"


def test_signed_links_carry_tokens_the_signer_verifies() -> None:
    links = Links(settings_for("https://example.org/news/"), SIGNER)
    unsubscribe = token_of(links.unsubscribe(12, 3), "https://example.org/news/unsubscribe/")
    claim = SIGNER.verify(Purpose.UNSUBSCRIBE, unsubscribe)
    assert claim is not None and (claim.subscriber_id, claim.list_id) == (12, 3)
    view = token_of(links.member_view("2019-01", 12, 3), "https://example.org/news/issues/2019-01?t=")
    claim = SIGNER.verify(Purpose.VIEW, view)
    assert claim is not None and (claim.subscriber_id, claim.list_id) == (12, 3)
    # Each token opens only its own door.
    assert SIGNER.verify(Purpose.VIEW, unsubscribe) is None
    assert SIGNER.verify(Purpose.UNSUBSCRIBE, view) is None


def test_the_unsubscribe_mailto_shape() -> None:
    links = Links(settings_for("https://news.example"), SIGNER)
    mailto = links.unsubscribe_mailto(12, 3)
    found = re.fullmatch(r"mailto:unsubscribe@efus\.example\?subject=unsubscribe%20([A-Za-z0-9_.-]+)", mailto)
    assert found, mailto  # the sender's domain, lower-cased; the subject word and the token
    assert SIGNER.verify(Purpose.UNSUBSCRIBE, found.group(1)) is not None
    assert links.unsubscribe_by_mail() == "mailto:unsubscribe@efus.example?subject=unsubscribe"


def test_members_links_need_a_secret_key() -> None:
    links = Links(settings_for("https://news.example"))
    assert links.issue("2019-01") == "https://news.example/issues/2019-01"  # public ones do not
    for make in (
        lambda: links.member_view("2019-01", 1, 1),
        lambda: links.unsubscribe(1, 1),
        lambda: links.unsubscribe_mailto(1, 1),
        lambda: links.for_messages("2019-01", 1, member=False, sender="a@b.example"),
    ):
        with pytest.raises(ConfigError, match="MAILOUT_SECRET_KEY"):
            make()


def test_the_pseudo_links_of_tests_and_previews() -> None:
    links = Links(settings_for("https://example.org/news/"))
    assert links.test_message("2019-01") == MessageUrls(
        "https://example.org/news/unsubscribe/test",
        "mailto:unsubscribe@efus.example?subject=unsubscribe%20test",
        "https://example.org/news/preview/2019-01",
        "https://example.org/news/preferences/test",
    )
    assert links.preview_sample("2019-01") == MessageUrls(
        "https://example.org/news/unsubscribe/preview",
        "mailto:unsubscribe@efus.example?subject=unsubscribe%20preview",
        "https://example.org/news/issues/2019-01",
        "https://example.org/news/preferences/preview",
    )
    assert set(SampleToken) == {"test", "preview"}


@pytest.mark.parametrize("member", [True, False])
def test_a_dispatchs_links_are_those_of_the_single_methods(member: bool) -> None:
    links = Links(settings_for("https://example.org/news/"), SIGNER)
    urls = links.for_messages("2019.01-special", 7, member=member, sender="News@Efus.Example")(42)
    assert urls.unsubscribe == links.unsubscribe(42, 7)
    assert urls.unsubscribe_mailto == links.unsubscribe_mailto(42, 7)
    view = links.member_view("2019.01-special", 42, 7) if member else links.issue("2019.01-special")
    assert urls.view == view
    assert urls.preferences == links.preferences(42, 7)


def test_a_local_server_address_replaces_the_base_url() -> None:
    here = Links(settings_for("https://news.example"), base_url="http://[::1]:8030")
    assert here.archive() == "http://[::1]:8030/issues/"
    assert here.preview() == "http://[::1]:8030/preview/"


def test_names_are_encoded_the_same_way_in_every_link() -> None:
    links = Links(settings_for("https://news.example"), SIGNER)
    # A valid issue name needs no encoding; anything else (an old dispatch's) is encoded, never cut.
    assert links.issue("2019.01-special_A") == "https://news.example/issues/2019.01-special_A"
    assert links.issue("x y#1/..") == "https://news.example/issues/x%20y%231%2F.."
    assert links.preview("x y#1") == "https://news.example/preview/x%20y%231"
    assert links.member_view("x y#1", 1, 2).startswith("https://news.example/issues/x%20y%231?t=")
    assert (
        links.picture("x y", "images/a b#2.png") == "https://news.example/issues/x%20y/images/a%20b%232.png"
    )
    private = private_picture_path("images/a b.png", "0123456789abcdef0123")
    assert private == "m/0123456789abcdef0123/images/a b.png"
    assert links.picture("2019-01", private).endswith("/2019-01/m/0123456789abcdef0123/images/a%20b.png")


# --- issue names -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["2019-01", "2019.01-special_A", "a", "A1", "x" * 200])
def test_names_an_issue_may_have(name: str) -> None:
    assert is_slug(name) and slug_problem(name) is None


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("x y#1", "x-y-1"),
        ("été 2019", "t-2019"),
        ("-draft", "draft"),
        (".hidden", "hidden"),
        ("a..b", "a.b"),
        ("what?", "what"),
        ("%%%", "issue"),
        ("x" * 201, "x" * 200),
    ],
)
def test_names_an_issue_may_not_have_and_what_to_use_instead(name: str, suggestion: str) -> None:
    assert not is_slug(name)
    problem = slug_problem(name)
    assert problem is not None and f"'{name}'" in problem
    assert problem.endswith(f"rename the folder, e.g. to '{suggestion}'")
    assert is_slug(suggestion)


def test_a_folder_name_that_would_break_links_is_refused(workspace: Path) -> None:
    shutil.copytree(EXAMPLE_ISSUE.parent, workspace / "issues" / "x y#1")
    for command in (
        ["issue", "check", "x y#1"],
        ["preview", "x y#1"],
        ["test", "x y#1", "--to", "me@efus.example"],
    ):
        code, out = run(*command)
        assert code == 1, (command, out)
        assert "issues/x y#1/issue.yaml: the folder name 'x y#1' cannot name an issue" in out, out
        assert "e.g. to 'x-y-1'" in out and "Traceback" not in out
    assert not (workspace / "build" / "x y#1").exists()  # nothing half-written


# --- end to end: the links of real messages -----------------------------------------

SLUG = "2019.01-special_A"
BASE = "https://example.org/news/"


#: Picture names that a link carries only percent-encoded: the logo (public), a members-only one.
LOGO = "images/logo & mark #1.png"
PRIVATE = "images/Amiens, 2019.png"


@pytest.fixture
def special(sending_workspace: Path) -> Path:
    """The sending workspace, its public base URL under a path, its issue named with dots and dashes.

    Two of the issue's pictures have names with spaces, ``#`` and ``&``.
    """
    config = sending_workspace / "mailout.toml"
    config.write_text(
        config.read_text(encoding="utf-8").replace('"https://news.example"', f'"{BASE}"'), encoding="utf-8"
    )
    folder = sending_workspace / "issues" / SLUG
    (sending_workspace / "issues" / "2019-01").rename(folder)
    issue = folder / "issue.yaml"
    text = issue.read_text(encoding="utf-8")
    text = text.replace("logo: images/logo.png", f'logo: "{LOGO}"')
    text = text.replace("image: images/amiens.png", f'image: "{PRIVATE}"')
    issue.write_text(text, encoding="utf-8")
    (folder / "images" / "logo.png").rename(folder / LOGO)
    (folder / "images" / "amiens.png").rename(folder / PRIVATE)
    return sending_workspace


@pytest.fixture
def web(special: Path) -> Iterator[Flask]:
    app = create_app(load_settings(special), local=True)
    yield app
    app.extensions["mailout"].engine.dispose()


def get(client: FlaskClient, url: str, links: Links, auth: tuple[str, str] | None = None) -> int:
    """Follow an absolute link as a proxy would: the base URL's path is the app's mount point."""
    path = token_of(url, links.base)
    with client.get(path, base_url=links.base + "/", auth=auth) as response:
        return response.status_code


def ids(workspace: Path) -> tuple[dict[str, int], dict[str, int]]:
    engine = make_engine(load_settings(workspace).database_url())
    with transaction(engine) as session:
        people = {email: id_ for email, id_ in session.execute(select(Subscriber.email, Subscriber.id))}
        lists = {name: id_ for name, id_ in session.execute(select(MailingList.name, MailingList.id))}
    engine.dispose()
    return people, lists


def mailto_of(message: EmailMessage) -> str:
    header = " ".join(str(message["List-Unsubscribe"]).split())
    return re.search(r"<(mailto:[^>]+)>", header).group(1)  # type: ignore[union-attr]


def absolute(html: str, links: Links, attribute: str) -> list[str]:
    return re.findall(rf'{attribute}="({re.escape(links.base)}/[^"]+)"', html)


def html_of(message: EmailMessage) -> str:
    return message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr,no-any-return]


@pytest.mark.slow
def test_the_links_of_sent_messages_are_those_links_makes_and_all_answer(
    special: Path, web: Flask, smtp_server: SMTPServer
) -> None:
    import_list(special, MEMBERS, "members")
    import_list(special, PUBLIC, "public")
    for list_name in ("members", "public"):
        code, out = run("send", SLUG, "--list", list_name, "--yes")
        assert code == 0, out
    links = Links(load_settings(special), SIGNER)
    people, lists = ids(special)
    client = web.test_client()
    assert len(smtp_server.messages) == len(MEMBERS) + len(PUBLIC)
    for received in smtp_server.messages:
        message = received.message()
        list_name = "members" if "<members." in str(message["List-Id"]) else "public"
        person, lst = people[received.rcpt_tos[0]], lists[list_name]
        # Each link carries the message's language (the issue's one here): see for_messages.
        assert unsubscribe_url(message) == links.unsubscribe(person, lst, "en")
        assert mailto_of(message) == links.unsubscribe_mailto(person, lst)
        view = (
            links.member_view(SLUG, person, lst, "en") if list_name == "members" else links.issue(SLUG, "en")
        )
        assert view_url(message) == view
        html = html_of(message)
        preferences = links.preferences(person, lst, "en")
        assert set(absolute(html, links, "href")) == {view, links.unsubscribe(person, lst, "en"), preferences}
        assert preferences in message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
        pictures = absolute(html, links, "src")
        assert links.picture(SLUG, LOGO) in pictures
        assert any(p.endswith("/images/Amiens%2C%202019.png") for p in pictures) == (list_name == "members")
        assert all(p.startswith(links.pictures(SLUG)) for p in pictures)
        for url in [view, links.unsubscribe(person, lst, "en"), preferences, *pictures]:
            assert get(client, url, links) == 200, url

    # The archive: the index links to the public page, whose links are the public ones.
    assert get(client, links.archive(), links) == 200
    with client.get("/issues/", base_url=BASE) as response:
        assert f'href="/news/issues/{SLUG}"' in response.get_data(as_text=True)
    with client.get(f"/issues/{SLUG}", base_url=BASE) as response:
        assert response.status_code == 200
        page = response.get_data(as_text=True)
    # Itself (x-default) and its page in each of the issue's languages (hreflang, the switcher).
    assert set(absolute(page, links, "href")) == {
        links.issue(SLUG),
        links.issue(SLUG, "en"),
        links.issue(SLUG, "fr"),
        # No one's preference page: the footer's link leads a visitor to the sign-up form.
        links.signup_form(),
    }
    assert f'href="{links.unsubscribe_by_mail()}"' in page
    relative = re.findall(r'src="(/news/issues/[^"]+)"', page)
    assert f"/news/issues/{SLUG}/images/logo%20%26%20mark%20%231.png" in relative
    assert not absolute(page, links, "src")  # pictures from this server
    for path in relative:
        with client.get(path.removeprefix("/news"), base_url=BASE) as response:
            assert response.status_code == 200, path


@pytest.mark.slow
def test_the_links_of_a_test_message_are_those_links_makes_and_all_answer(
    special: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = run("test", SLUG, "--to", "me@efus.example")
    assert code == 0, out
    links = Links(load_settings(special))
    urls = links.test_message(SLUG)
    # The team follows the preview link on the public host, with the preview's password.
    monkeypatch.setenv("MAILOUT_PREVIEW_PASSWORD", "correct horse")
    app = create_app(load_settings(special))
    client = app.test_client()
    assert len(smtp_server.messages) == 4  # one per variant: 2 segments x 2 languages
    for received in smtp_server.messages:
        message = received.message()
        assert unsubscribe_url(message) == urls.unsubscribe
        assert mailto_of(message) == urls.unsubscribe_mailto
        assert view_url(message) == urls.view == links.preview(SLUG)
        html = html_of(message)
        assert set(absolute(html, links, "href")) == {urls.unsubscribe, urls.view, urls.preferences}
        pictures = absolute(html, links, "src")
        assert pictures
        for url in [urls.unsubscribe, urls.view, urls.preferences, *pictures]:
            assert get(client, url, links, auth=("team", "correct horse")) == 200, url
    app.extensions["mailout"].engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_web_app_refuses_a_name_that_cannot_be_an_issues(special: Path, web: Flask) -> None:
    shutil.copytree(EXAMPLE_ISSUE.parent, special / "issues" / "x y#1")
    client = web.test_client()
    # The preview says what is wrong with the folder, as `mailout issue check` does.
    response = client.get("/preview/x%20y%231")
    assert response.status_code == 422
    assert "the folder name &#39;x y#1&#39; cannot name an issue" in response.get_data(as_text=True)
    for path in (
        "/preview/x%20y%231/files/images/logo.png",
        "/issues/x%20y%231/images/logo.png",
        "/issues/x%20y%231",
        "/preview/..",
        "/preview/..%2F..",
    ):
        assert client.get(path).status_code == 404, path
    # The valid name next to it is unaffected.
    assert client.get(f"/preview/{SLUG}").status_code == 200
    with client.get(f"/preview/{SLUG}/files/{quote(LOGO)}") as response:
        assert response.status_code == 200


# --- languages -------------------------------------------------------------------


@pytest.mark.parametrize("member", [True, False])
def test_a_dispatchs_links_carry_its_language(member: bool) -> None:
    links = Links(settings_for("https://example.org/news/"), SIGNER)
    urls = links.for_messages("2019-01", 7, member=member, sender="News@Efus.Example", language="fr")(42)
    # The unsubscribe page answers in French; the token and the address it is POSTed to are one.
    assert urls.unsubscribe == links.unsubscribe(42, 7, "fr") == links.unsubscribe(42, 7) + "?lang=fr"
    token = token_of(urls.unsubscribe, "https://example.org/news/unsubscribe/").removesuffix("?lang=fr")
    claim = SIGNER.verify(Purpose.UNSUBSCRIBE, token)
    assert claim is not None and (claim.subscriber_id, claim.list_id) == (42, 7)
    # The mailto is the same whatever the language.
    assert urls.unsubscribe_mailto == links.unsubscribe_mailto(42, 7)
    # The preference page: its own purpose, so it is no unsubscribe token and the reverse.
    assert urls.preferences == links.preferences(42, 7, "fr")
    preferences = token_of(urls.preferences, "https://example.org/news/preferences/").removesuffix("?lang=fr")
    assert SIGNER.verify(Purpose.PREFERENCES, preferences) == Claim(Purpose.PREFERENCES, 42, 7)
    assert SIGNER.verify(Purpose.UNSUBSCRIBE, preferences) is None
    assert SIGNER.verify(Purpose.PREFERENCES, token) is None
    if member:
        assert urls.view == links.member_view("2019-01", 42, 7, "fr")
        assert urls.view.startswith("https://example.org/news/issues/2019-01/fr?t=")
        assert SIGNER.verify(Purpose.VIEW, urls.view.rsplit("?t=", 1)[1]) is not None
    else:
        assert urls.view == links.issue("2019-01", "fr") == "https://example.org/news/issues/2019-01/fr"


def test_language_links_write_the_canonical_tag_and_refuse_anything_else() -> None:
    links = Links(settings_for("https://news.example"), SIGNER)
    assert links.issue("2019-01", "FR_be") == "https://news.example/issues/2019-01/fr-BE"
    assert links.archive("es") == "https://news.example/issues/?lang=es"
    assert Links.exported_issue("2019-01", "de") == "2019-01/de/index.html"
    assert Links.exported_issue("2019-01") == "2019-01/index.html"
    assert (
        links.preview_sample("2019-01", "it").unsubscribe
        == "https://news.example/unsubscribe/preview?lang=it"
    )
    for bad in ("x/../y", "fr?t=1", "english", "fr&lang=de"):
        with pytest.raises(ValueError, match="not a language tag"):
            links.issue("2019-01", bad)
        with pytest.raises(ValueError, match="not a language tag"):
            links.for_messages("2019-01", 1, member=True, sender="a@b.example", language=bad)
    # Pictures are shared by every language: one prefix.
    assert links.pictures("2019-01") == "https://news.example/issues/2019-01/"
