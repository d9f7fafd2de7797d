"""Send one dispatch on a fake clock, logging each message before it goes on the wire (for test_routes).

    python -m tests.routesend WORKSPACE DISPATCH START LOG [HOLD]

Run in the workspace's environment (MAILOUT_DATABASE_URL, MAILOUT_SECRET_KEY). The clock
starts at START (ISO 8601, UTC) and moves only when the send loop waits. Before each
message goes on the wire a line "CLOCK-TIME RECIPIENT" is appended to LOG. With HOLD,
the message after the HOLD-th one is logged, then the process waits there for its kill.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

from mailout import dispatching, transports
from mailout.config import load_settings
from mailout.db import make_engine
from mailout.tokens import Signer
from tests.fakeclock import FakeClock


def main(workspace: str, dispatch: str, start: str, log: str, hold: str = "") -> None:
    settings = load_settings(Path(workspace))
    engine = make_engine(settings.database_url())
    clock = FakeClock(dt.datetime.fromisoformat(start))
    out = open(log, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (open until the kill)
    original = transports.SmtpConnection.start
    count = 0

    def logged(self: transports.SmtpConnection, sender: str, recipient: str, data: bytes) -> None:
        nonlocal count
        count += 1
        out.write(f"{clock.now().isoformat()} {recipient}\n")  # line-buffered: written at once
        if hold and count > int(hold):
            time.sleep(3600)  # killed here, its mark committed, the message not on the wire
        original(self, sender, recipient, data)

    transports.SmtpConnection.start = logged  # type: ignore[method-assign]
    result = dispatching.run(
        engine, settings, int(dispatch), Signer.from_secret(settings.secret_key), clock=clock
    )
    print(result.ending, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
