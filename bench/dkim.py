"""Benchmark DKIM signing: the cost per message, in CPU microseconds.

Run from the repository root:  python bench/dkim.py  [--messages N] [--tripled]

Builds the example issue's members variant (``--tripled``: every section three
times, a long issue) and, for N recipients with their own names and links,
measures the CPU time (``time.process_time``, so other work on the machine
does not count) of:

- building the messages without a signature (the baseline);
- building them with ``MessageTemplate(dkim=...)``: the body hashed from its
  fixed pieces, the shared prefix's hash copied (the path mailout uses);
- signing the unsigned messages by the generic path (``DkimSigner.sign``:
  parse, canonicalize and hash the whole body);
- the RSA-2048 signature of one header block alone, and the body hash alone;
- the wall time of those signatures on 1 thread, then split over 2 threads
  (the send loop signs on its connections' threads): about half on 2 free cores
  when the ``cryptography`` package releases the GIL while OpenSSL signs
  (recent versions do), about the same when it does not.

Each with RSA-2048, then RSA-2048 plus Ed25519. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailout.config import load_settings
from mailout.dkim import DkimKey, DkimSigner, body_hash
from mailout.issues import load_issue
from mailout.message import Addressing, MessageTemplate
from mailout.render import Recipient, render_variant
from mailout.segments import Segment

ROOT = Path(__file__).resolve().parent.parent
ADDRESSING = Addressing("Efus Newsletter", "newsletter@efus.example", list_name="members")


def cpu_us(work: Callable[[], object], count: int) -> float:
    """Return the CPU microseconds ``work`` takes per message, best of three runs of ``count``."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--tripled", action="store_true", help="every section three times")
    args = parser.parse_args()
    n = args.messages

    issue = load_issue(ROOT / "issues" / "2019-01" / "issue.yaml")
    if args.tripled:
        issue = dataclasses.replace(issue, sections=issue.sections * 3)
    variant = render_variant(issue, load_settings(ROOT, env={}), Segment.MEMBER)
    people = [
        (
            f"Réka Łukasz {i}",
            f"reader{i}@city{i % 50}.example",
            Recipient(
                f"Réka {i}",
                f"https://news.example/unsubscribe/{i:032d}",
                f"https://news.example/v?t={i:032d}",
                f"https://news.example/preferences/{i:032d}",
            ),
        )
        for i in range(n)
    ]

    def build_all(template: MessageTemplate) -> list[bytes]:
        return [
            template.build(
                to_name=name,
                to_address=address,
                message_id=f"bench.{i}@efus.example",
                recipient=recipient,
                unsubscribe_mailto=f"mailto:unsubscribe@efus.example?subject=unsubscribe%20{i}",
            )
            for i, (name, address, recipient) in enumerate(people)
        ]

    rsa_key = DkimKey("efus.example", "bench", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ed_key = DkimKey("efus.example", "benche", ed25519.Ed25519PrivateKey.generate())
    plain = MessageTemplate(variant, ADDRESSING)
    messages = build_all(plain)
    size = sum(len(m) for m in messages) // n
    print(
        f"{n} messages of {size / 1000:.0f} KB on average ({'tripled' if args.tripled else 'example'} issue)"
    )
    baseline = cpu_us(lambda: build_all(plain), n)
    print(f"  build, unsigned: {baseline:.0f} µs/message")
    shared = MessageTemplate(variant, ADDRESSING, dkim=DkimSigner([ed_key])).dkim_body.pieces
    print(f"  body before the first personal value: {len(shared[0]) / 1000:.1f} KB; pieces: {len(shared)}")
    for label, keys in (
        ("Ed25519 only", [ed_key]),
        ("RSA-2048", [rsa_key]),
        ("RSA-2048 + Ed25519", [rsa_key, ed_key]),
    ):
        signer = DkimSigner(keys)
        template = MessageTemplate(variant, ADDRESSING, dkim=signer)
        prefix = cpu_us(lambda t=template: build_all(t), n) - baseline  # type: ignore[misc]
        generic = cpu_us(lambda s=signer: [s.sign(m) for m in messages], n)  # type: ignore[misc]
        print(f"  {label:18}: signing in build (prefix path):     {prefix:6.0f} µs/message")
        print(f"  {label:18}: signing a built message (generic): {generic:6.0f} µs/message")
    head = messages[0][: messages[0].index(b"\r\n\r\n") + 2]
    digest = body_hash(messages[0])
    rsa_only = DkimSigner([rsa_key])
    print(
        f"  RSA-2048 signature of the headers alone:   {cpu_us(lambda: [rsa_only.sign_parts(head, digest) for _ in range(n)], n):8.0f} µs/message"
    )

    def sign_in(threads: int) -> float:
        share = max(1, n // threads)
        workers = [
            threading.Thread(target=lambda: [rsa_only.sign_parts(head, digest) for _ in range(share)])
            for _ in range(threads)
        ]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return time.perf_counter() - start

    one, two = sign_in(1), sign_in(2)
    print(
        f"  {n} RSA-2048 signatures, wall time: 1 thread {one:.2f} s, 2 threads {two:.2f} s ({one / two:.2f}x)"
    )
    print(
        f"  relaxed body hash of a whole message:      {cpu_us(lambda: [body_hash(m) for m in messages], n):8.0f} µs/message"
    )


if __name__ == "__main__":
    main()
