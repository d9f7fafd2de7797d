"""The tree drawn in errors.py's docstring names every MailoutError, where it lives and its parent."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import mailout
from mailout import errors
from mailout.errors import MailoutError

# One drawn class: the tree's prefix (its depth), the name, and the module when not errors.py.
TREE_LINE = re.compile(
    r"^    (?P<prefix>(?:│   |    )*)(?:[├└]── )?(?P<name>\w+)(?: \[(?P<module>[\w.]+)\])?"
)


def drawn() -> dict[str, tuple[str, str | None]]:
    """Return each class drawn in the docstring: name -> (module, parent's name)."""
    text = errors.__doc__ or ""
    tree = text[text.index("::\n") + 3 :].splitlines()
    found: dict[str, tuple[str, str | None]] = {}
    parents: list[str] = []  # the last class drawn at each depth
    for line in tree:
        if "── " not in line and line.strip() != "MailoutError":
            continue  # a blank line or a description carried over to the next line
        match = TREE_LINE.match(line)
        assert match, f"not a line of the tree: {line!r}"
        depth = len(match["prefix"]) // 4 + (1 if "── " in line else 0)
        del parents[depth:]
        assert match["name"] not in found, f"{match['name']} is drawn twice"
        found[match["name"]] = (match["module"] or "errors", parents[-1] if parents else None)
        parents.append(match["name"])
    return found


def every_subclass() -> dict[str, type[MailoutError]]:
    """Return every MailoutError subclass, by name, after importing every module of the package."""
    for module in pkgutil.walk_packages(mailout.__path__, "mailout."):
        if not module.name.endswith("__main__"):  # running it would run the command line
            importlib.import_module(module.name)
    found: dict[str, type[MailoutError]] = {"MailoutError": MailoutError}
    pending = [MailoutError]
    while pending:
        for cls in pending.pop().__subclasses__():
            assert found.setdefault(cls.__name__, cls) is cls, f"two error classes named {cls.__name__}"
            pending.append(cls)
    return found


def test_the_tree_names_every_error_class_and_no_other() -> None:
    names, classes = set(drawn()), set(every_subclass())
    assert not classes - names, f"add to the tree in errors.py: {sorted(classes - names)}"
    assert not names - classes, f"drawn in errors.py but no longer exist: {sorted(names - classes)}"


def test_the_tree_says_where_each_class_lives_and_what_it_derives_from() -> None:
    classes = every_subclass()
    for name, (module, parent) in drawn().items():
        cls = classes[name]
        assert cls.__module__ == f"mailout.{module}", f"{name} lives in {cls.__module__}"
        bases = [base.__name__ for base in cls.__bases__ if issubclass(base, MailoutError)]
        assert bases == ([parent] if parent else []), f"{name} derives from {bases}, drawn under {parent}"


@pytest.mark.parametrize(
    ("name", "module", "parent"),
    [
        ("MailoutError", "errors", None),
        ("CsvError", "errors", "MailoutError"),
        ("InvalidSubscriber", "subscribers", "MailoutError"),
        ("PermanentFailure", "transports", "DeliveryFailure"),
    ],
)
def test_the_tree_is_read_as_drawn(name: str, module: str, parent: str | None) -> None:
    # Guards the reader above: a reader that found nothing would let every check pass.
    assert drawn()[name] == (module, parent)
