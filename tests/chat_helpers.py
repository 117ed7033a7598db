"""Shared test scaffolding for the chat app: users with real keys, signed requests, a tiny driver."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from bft.app.base import ExecContext, ExecResult, Request
from bft.app.chat import ChatApp
from bft.crypto import Ed25519Signer, Ed25519Verifier
from bft.pb.bftchat.v1 import chat_pb2 as cpb
from bft.wire import make_request, open_request
from client import e2e

CLUSTER = hashlib.sha256(b"test cluster").digest()[:16]
VERIFIER = Ed25519Verifier()
Code = cpb.ChatError.Code


def _seed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


@dataclass
class User:
    """A client identity: Ed25519 signing key, X25519 box keys, an account name it uses."""

    name: str
    label: str = ""
    signer: Ed25519Signer = field(init=False)
    box: e2e.BoxKeys = field(init=False)
    ts: int = 0

    def __post_init__(self) -> None:
        label = self.label or self.name
        self.signer = Ed25519Signer(_seed("sign:" + label))
        self.box = e2e.BoxKeys.from_secret(_seed("box:" + label))

    @property
    def key(self) -> bytes:
        return self.signer.public_key

    def request(self, op: bytes, *, read_only: bool = False) -> Request:
        """A signed request as the core hands it to the app (verified on the way)."""
        self.ts += 1
        raw = make_request(self.signer, CLUSTER, 1, self.ts, op, read_only=read_only)
        return open_request(raw, CLUSTER, VERIFIER).request

    def send(self, to: User, text: bytes, *, as_name: str | None = None) -> Request:
        self.ts += 1
        raw = e2e.seal_message(
            self.signer, CLUSTER, 1, self.ts, as_name or self.name, self.box, to.name, to.box.public, text
        )
        return open_request(raw, CLUSTER, VERIFIER).request


class Driver:
    """Executes requests in order with increasing seq and timestamps, like the core would."""

    def __init__(self, app: ChatApp | None = None) -> None:
        self.app = app or ChatApp()
        self.seq = 0
        self.events: list[object] = []

    def run(self, req: Request) -> cpb.ChatResult:
        return self.exec(req)[0]

    def exec(self, req: Request) -> tuple[cpb.ChatResult, ExecResult]:
        self.seq += 1
        out = self.app.execute(req, ExecContext(seq=self.seq, index=0, timestamp_us=1_000_000 * self.seq))
        self.events.extend(out.events)
        return e2e.parse_result(out.result), out

    def query(self, req: Request) -> cpb.ChatResult:
        return e2e.parse_result(self.app.query(req))


def error_code(result: cpb.ChatResult) -> int:
    assert result.WhichOneof("result") == "error", result
    return result.error.code
