"""Benchmark rendering: all variants of an issue, and the per-recipient fill.

Run from the repository root:  python bench/render.py  [--runs N] [--recipients N]

Measures, on this machine:
- building every variant (Jinja -> MJML -> HTML -> premailer, plus text) of the
  example issue, of a generated issue three times its size, and of the example
  issue in four languages (en, fr, de, it: 4 languages x 2 segments = 8 variants),
  median of N runs, in wall-clock and in CPU seconds of this process;
- filling the per-recipient placeholders of one variant (HTML and text), in
  microseconds per recipient.
Prints a Markdown table to paste into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import time
from pathlib import Path

from machine import describe

from mailout.config import load_settings
from mailout.issues import Issue, load_issue
from mailout.render import Recipient, render_issue
from mailout.segments import Segment

ROOT = Path(__file__).resolve().parent.parent


def tripled(issue: Issue) -> Issue:
    """The same issue with every section three times: a long issue."""
    return dataclasses.replace(issue, sections=issue.sections * 3)


def in_four_languages(issue: Issue) -> Issue:
    """The issue declared in four languages: eight variants (the text is the default language's
    where no translation is written, as for a fresh translation)."""
    return dataclasses.replace(issue, languages=("en", "fr", "de", "it"))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_builds(issue: Issue, runs: int) -> tuple[float, float, int, int]:
    """Return the median wall-clock and CPU seconds to build every variant, the largest HTML, the count."""
    settings = load_settings(ROOT, env={})
    render_issue(issue, settings)  # warm-up: imports, template compilation
    samples, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), cpu_seconds()
        variants = render_issue(issue, settings)
        samples.append(time.perf_counter() - start)
        cpu.append(cpu_seconds() - start_cpu)
    size = max(len(v.html.encode()) for v in variants.values())
    return statistics.median(samples), statistics.median(cpu), size, len(variants)


def time_personalize(issue: Issue, recipients: int) -> float:
    settings = load_settings(ROOT, env={})
    variant = render_issue(issue, settings)[Segment.MEMBER, issue.variant_languages("en")[-1]]
    people = [
        Recipient(
            f"Reader {n}",
            f"https://news.example/u/{n:08d}",
            f"https://news.example/issues/x?t={n:08d}",
            f"https://news.example/preferences/{n:08d}",
        )
        for n in range(recipients)
    ]
    start = time.perf_counter()
    for person in people:
        variant.personalize(person)
    return (time.perf_counter() - start) / recipients * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--recipients", type=int, default=20_000)
    args = parser.parse_args()
    example = load_issue(ROOT / "issues" / "2019-01" / "issue.yaml")
    cases = (
        ("example issue", example),
        ("generated, 3x larger", tripled(example)),
        ("example, 4 languages", in_four_languages(example)),
    )
    rows = []
    for label, issue in cases:
        items = sum(len(s.items) for s in issue.sections)
        seconds, cpu, size, count = time_builds(issue, args.runs)
        per_recipient = time_personalize(issue, args.recipients)
        rows.append((label, items, count, seconds, cpu, size, per_recipient))
    print(f"Machine: {describe()}")
    print(f"Median of {args.runs} runs; personalization over {args.recipients:,} recipients.\n")
    print("| issue | items | variants | all variants built | CPU | largest HTML | fill per recipient |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, items, count, seconds, cpu, size, per_recipient in rows:
        print(
            f"| {label} | {items} | {count} | {seconds * 1000:.0f} ms | {cpu * 1000:.0f} ms"
            f" | {size / 1000:.1f} KB | {per_recipient:.1f} µs |"
        )


if __name__ == "__main__":
    main()
