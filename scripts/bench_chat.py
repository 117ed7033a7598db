#!/usr/bin/env python3
"""Chat app micro-benchmark (not a test): per-operation cost, digest cost, snapshot/restore time.

Usage: .venv/bin/python scripts/bench_chat.py [--messages 100000] [--body 256]

Requests are built directly (the app does not verify signatures; the core does), so the numbers are
the application's own cost: op parsing, checks, the incremental LtHash update, result encoding.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bft.app.base import ExecContext, Request
from bft.app.chat import ChatApp, ChatLimits
from bft.lthash import LtHash
from bft.pb.bftchat.v1 import chat_pb2 as cpb
from client import e2e

BOX = hashlib.sha256(b"bench box").digest()


def key(i: int) -> bytes:
    return hashlib.sha256(b"bench key %d" % i).digest()


def req(k: bytes, op: bytes, nonce: int) -> Request:
    signed = b"BFTC\x01\x01" + bytes(16) + k + nonce.to_bytes(8, "big") + op  # shaped like the real thing
    return Request(k, 1, nonce, op, signed, hashlib.sha512(signed).digest())


def send_op(sender: str, to: str, body: int) -> bytes:
    send = cpb.ChatSend(
        sender=sender, recipient=to, recipient_box_key=BOX, sender_box_key=BOX, ciphertext=bytes(body)
    )
    return cpb.ChatOp(send=send).SerializeToString()


def timed(label: str, calls: Sequence[Callable[[], object]]) -> float:
    """Mean wall time of ``calls`` (their inputs are built beforehand, outside the timing)."""
    start = time.perf_counter()
    for call in calls:
        call()
    us = (time.perf_counter() - start) / len(calls) * 1e6
    print(f"  {label:<46} {us:9.1f} µs")
    return us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--messages",
        type=int,
        default=100_000,
        help="undelivered messages in the large state (its fill, snapshot and restore are timed; "
        "default %(default)s)",
    )
    ap.add_argument(
        "--body", type=int, default=256, help="ciphertext bytes per message (default %(default)s)"
    )
    ap.add_argument(
        "--recipients",
        type=int,
        default=100,
        help="accounts that send and receive those messages, round robin (default %(default)s)",
    )
    args = ap.parse_args()
    n = 2000

    h = LtHash()
    for i in range(20 * n):  # warm up (allocator, caches, CPU clock) before measuring
        h.add(b"warm %d" % i)
    print("LtHash primitives")
    elements = [b"element %d" % i for i in range(n)]
    timed("LtHash.add (one element)", [partial(h.add, e) for e in elements])
    timed("LtHash.remove (one element)", [partial(h.remove, e) for e in elements])

    app = ChatApp(ChatLimits(register_max=10**9))  # registers 2n accounts at one batch time
    ctx = ExecContext(seq=1, index=0, timestamp_us=0)

    def execs(reqs: list[Request]) -> list[Callable[[], object]]:
        return [partial(app.execute, r, ctx) for r in reqs]

    print(f"ChatApp, mean over up to {n} ops (parsing, checks, digest update, result encoding)")
    timed("register", execs([req(key(i), e2e.register_op(f"u{i}", BOX), i) for i in range(2 * n)]))
    small = [req(key(i), send_op(f"u{i}", "u0", args.body), i) for i in range(n)]
    timed(f"send, {args.body} B body", execs(small))
    timed("send, 64 KiB body", execs([req(key(i), send_op(f"u{i}", "u1", 65536), i) for i in range(n)]))
    timed("ack (one message each)", execs([req(key(0), e2e.ack_op("u0", i + 1), i) for i in range(n)]))
    page = len(e2e.parse_result(app.query(req(key(1), e2e.fetch_op("u1"), 0))).messages.messages)
    fetches = [partial(app.query, req(key(1), e2e.fetch_op("u1"), i)) for i in range(200)]
    timed(f"fetch page of {page} x 64 KiB (1 MiB cap)", fetches)
    lists = [partial(app.query, req(key(1), e2e.list_op("u1*"), i)) for i in range(200)]
    timed("list 'u1*' (page of 100)", lists)
    deletes = [req(key(i), e2e.delete_op(f"u{i}"), i) for i in range(n, 2 * n)]
    timed("delete (account with 0 messages)", execs(deletes))
    stored = app.stored_messages
    timed(f"delete (account with {stored} messages)", execs([req(key(1), e2e.delete_op("u1"), 0)]))

    def digest_after_change() -> None:
        app._digest = None  # force the recomputation a real change would cause
        app.digest()

    timed("digest() after a change (O(1))", [digest_after_change] * n)

    print(f"\nState with {args.messages} undelivered messages ({args.body} B ciphertext each)")
    big = ChatApp()
    for r in range(args.recipients):
        big.execute(req(key(r), e2e.register_op(f"r{r}", BOX), r), ctx)
    t0 = time.perf_counter()
    for m in range(args.messages):
        r = m % args.recipients
        big.execute(req(key(r), send_op(f"r{r}", f"r{(r + 1) % args.recipients}", args.body), m), ctx)
    fill = time.perf_counter() - t0
    print(f"  fill: {fill:.2f} s ({fill / args.messages * 1e6:.1f} µs per send)")
    t0 = time.perf_counter()
    snap = big.snapshot()
    t_snap = time.perf_counter() - t0
    t0 = time.perf_counter()
    other = ChatApp()
    other.restore(snap)
    t_restore = time.perf_counter() - t0
    assert other.digest() == big.digest()
    t0 = time.perf_counter()
    big.digest()
    t_digest = time.perf_counter() - t0
    print(f"  snapshot: {t_snap:.3f} s, {len(snap) / 1e6:.1f} MB")
    print(f"  restore:  {t_restore:.3f} s (parse, validate, rebuild LtHash from scratch)")
    print(f"  digest(): {t_digest * 1e6:.1f} µs (cached; {big.stored_messages} messages stored)")


if __name__ == "__main__":
    main()
