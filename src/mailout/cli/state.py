"""What every command shares: the workspace, its settings, its database."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from ..config import Settings, load_settings
from ..db import Engine, open_engine
from ..issues import Issue, find_issue, load_issue
from ..tokens import Signer


@dataclass
class State:
    """What the root group hands to every command: where the workspace is, and overrides."""

    workspace: Path | None
    overrides: dict[str, str] = field(default_factory=dict)
    _settings: Settings | None = None
    _engine: Engine | None = None
    _signer: Signer | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.workspace, overrides=self.overrides)
        return self._settings

    def issue(self, name: str) -> Issue:
        return load_issue(
            find_issue(name, self.settings.path("issues")),
            require_translations=self.settings.newsletter.require_translations,
        )

    def engine(self) -> Engine:
        """Return the workspace database, checked to be at the newest schema."""
        if self._engine is None:
            database = self.settings.database
            self._engine = open_engine(
                self.settings.database_url(), sqlite_synchronous=database.sqlite_synchronous
            )
            click.get_current_context().call_on_close(self._engine.dispose)
        return self._engine

    def signer(self) -> Signer:
        """Return the signer of links and tokens; raise ``ConfigError`` without ``MAILOUT_SECRET_KEY``."""
        if self._signer is None:
            self._signer = Signer.from_secret(self.settings.secret_key)
        return self._signer


pass_state = click.make_pass_decorator(State)
