"""Segments: who may see what of an issue. A list has one; a variant is rendered for one."""

from __future__ import annotations

from enum import StrEnum


class Segment(StrEnum):
    """Who may see what: members see everything, the public only what is not members-only."""

    MEMBER = "member"
    PUBLIC = "public"
