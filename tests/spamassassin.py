"""SpamAssassin run offline on the messages mailout writes: one process scores them all.

``spamassassin -L`` runs the local rules only (no DNS block lists, no Razor,
no DKIM key look-ups), which is what a test can repeat: the score then comes
from the message's content and headers alone. Bayes is off, so nothing is
learnt (or read) from the user's home folder; ``HOME`` points at a folder of
the test's own anyway, where SpamAssassin writes its preferences file.
"""

from __future__ import annotations

import mailbox
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SPAMASSASSIN = shutil.which("spamassassin")
# The report's table: " 0.7 HTML_FONT_LOW_CONTRAST BODY: HTML font color similar ..."
RULE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z][A-Z0-9_]+)\s", re.MULTILINE)
TOTAL = re.compile(r"Content analysis details:\s+\((-?\d+(?:\.\d+)?) points")
MESSAGE_ID = re.compile(r"^Message-ID:\s*(<[^>\s]+>)", re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class Report:
    """The score SpamAssassin gave one message, and every rule that hit with its points."""

    score: float
    rules: dict[str, float]

    def describe(self) -> str:
        return f"{self.score} ({', '.join(f'{name} {points}' for name, points in self.rules.items())})"


def parse(output: str) -> dict[str, Report]:
    """Return the report ``spamassassin -t`` appended to each message of ``output``, by Message-ID.

    SpamAssassin reads an mbox in its own order (by date), not in the file's.
    """
    reports: dict[str, Report] = {}
    parts = TOTAL.split(output.replace("\r\n", "\n"))
    # parts: the first message, then per report its total and the rest: ", 5.0 required)",
    # a blank line, the table, a blank line, the next message.
    messages = parts[0::2]
    for message, total, rest in zip(messages, parts[1::2], parts[2::2], strict=False):
        found = MESSAGE_ID.search(message)
        if found is None:
            raise RuntimeError(f"no Message-ID before a report: {message[:300]!r}")
        table = rest.split("\n\n")[1]
        reports[found.group(1)] = Report(float(total), {name: float(p) for p, name in RULE.findall(table)})
    return reports


def score(messages: list[bytes], folder: Path) -> dict[str, Report]:
    """Score ``messages`` with one ``spamassassin -L -t`` over an mbox; their reports by Message-ID."""
    assert SPAMASSASSIN is not None
    folder.mkdir(parents=True, exist_ok=True)
    box = mailbox.mbox(folder / "messages.mbox")
    for message in messages:
        box.add(message)
    box.flush()
    box.close()
    with (folder / "messages.mbox").open("rb") as stdin:
        result = subprocess.run(
            [SPAMASSASSIN, "-L", "-t", "--mbox", "--cf=use_bayes 0", "--cf=bayes_auto_learn 0"],
            stdin=stdin, capture_output=True, timeout=300, check=False,
            env={"HOME": str(folder), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(
            f"spamassassin exited with {result.returncode}: {result.stderr.decode(errors='replace')}"
        )
    reports = parse(result.stdout.decode("utf-8", errors="replace"))
    if len(reports) != len(messages):
        raise RuntimeError(f"{len(reports)} reports for {len(messages)} messages")
    return reports
