"""Who is running a command: the name recorded with an erasure, a dispatch or an approval."""

from __future__ import annotations

import getpass
import subprocess


def current_operator(by: str | None = None) -> str:
    """Return ``by`` when given; else git's ``user.name <user.email>``; else the login name."""
    if by and by.strip():
        return by.strip()
    found = []
    for key in ("user.name", "user.email"):
        try:
            result = subprocess.run(
                ["git", "config", "--get", key],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            result = None
        found.append(result.stdout.strip() if result and result.returncode == 0 else "")
    name, email = found
    if name and email:
        return f"{name} <{email}>"
    if name or email:
        return name or email
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"
