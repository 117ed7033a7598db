"""The chat client library: one user's view of a bftchat cluster, as typed async calls.

``ChatClient`` puts the chat operations (register, list, send, fetch/ack, delete, live messages) on
top of the session layer in ``client.session`` (streams to every replica, signed requests,
f+1 matching verified replies for ordered requests, 2f+1 for one-round reads with fallback to
ordering, signed pushes accepted from f+1 replicas). This module adds what a user needs:

* each process is its own client session (the session layer picks a random session id and
  timestamps max(clock in microseconds, last + 1)), so several processes can use one key at once
  (a terminal running ``chat``, another running ``send``, a script in a loop) and a retry of one
  request is executed at most once; a stale-timestamp answer is recovered from by the session
  layer, which re-signs above what the replicas named (``StaleTimestamp`` if it cannot);
* one request at a time per session (as PBFT assumes; the session layer's lock), so concurrent
  callers of one client queue;
* results turned into typed errors (``client.errors``), including which replicas could not be
  reached and why;
* end-to-end encryption (``client.e2e``): messages are verified (sender signature) and decrypted
  here, and nothing a single replica says is believed;
* live delivery: ``messages()`` subscribes, catches up by fetching, then fetches again whenever
  f+1 replicas push a new message id, a stream re-subscribes (reconnect), or a poll interval
  passes, and acknowledges what its consumer has taken so it is not delivered twice.

``SyncChatClient`` is the same API for scripts, blocking, with the event loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio

from bft.app.names import normalize_name, normalize_pattern
from bft.clusterconf import ClusterConfig, load_config
from bft.crypto import sha256
from bft.keys import UserKey, fingerprint_of, load_user_key
from bft.pb.bftchat.v1 import chat_pb2 as cpb
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.replies import CheckedReply
from client import e2e, receipts
from client.errors import (
    ChatClientError,
    ClusterUnreachable,
    FateUnknown,
    NameTaken,
    NoAgreement,
    NoSuchAccount,
    NoSuchUser,
    NotOwner,
    RejectedError,
    UsageError,
)
from client.session import ClusterSession, RequestFailed, rpc_reason, status

DEFAULT_TIMEOUT = 15.0  # seconds for one operation, retransmissions included
CONNECT_TIMEOUT = 5.0  # seconds to reach enough replicas before giving up
POLL_EVERY = 30.0  # live delivery fetches at least this often, in case a push was lost
# What the "needed" count of a ClusterUnreachable is for (f+1, 2f+1, f+1 replicas).
ANSWER = "for an agreed answer"
ORDER = "to order requests"
LIVE = "for live delivery"
_Code = cpb.ChatError.Code
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    signing_key: bytes
    box_key: bytes

    @property
    def fingerprint(self) -> str:
        """Compare out of band to know who is behind the name (see docs/CHAT.md, delete semantics)."""
        return fingerprint_of(self.signing_key, self.box_key)


@dataclass(frozen=True, slots=True)
class Sent:
    recipient: str
    id: int
    seq: int
    timestamp_us: int
    ref: bytes = b""  # SHA-256 of the signed request that was executed: the message's identity
    recipient_key: bytes = b""  # the recipient's signing key when the message was encrypted to it
    recipient_box: bytes = b""
    receipt: bytes = b""  # the f+1 signed replies proving the cluster committed it (client.receipts)


@dataclass(frozen=True, slots=True)
class Message:
    """A delivered message. ``problem`` is set (and ``text`` empty) if it failed verification or
    decryption: it is still reported and acknowledged, or it would block the inbox forever."""

    id: int
    seq: int
    timestamp_us: int
    sender: str
    recipient: str
    sender_key: bytes
    text: str
    problem: str | None = None
    ref: bytes = b""  # SHA-256 of the signed bytes: unique per message, whatever cluster or id
    sender_box_key: bytes = b""


def message_ref(request: bytes) -> bytes:
    """A message's identity: the SHA-256 of the signed bytes of its send request (what the
    recipient fetches as ``signed``), from the serialised request envelope the sender holds."""
    envelope = pb.Envelope()
    envelope.ParseFromString(request)
    return sha256(envelope.body)


def _name(raw: str, what: str = "account name") -> str:
    name = normalize_name(raw)
    if name is None:
        raise UsageError(
            f"invalid {what} {raw!r}: 1-32 characters a-z, 0-9, '_' or '-', starting with a letter"
        )
    return name


class ChatClient:
    """One user's chat client (async). ``async with ChatClient(...) as c:`` connects and closes.

    ``account`` is the account this client acts as (default: the name stored in the key file);
    only ``register``, ``accounts`` and ``lookup`` work without one.
    """

    def __init__(
        self,
        config: ClusterConfig,
        key: UserKey,
        *,
        account: str | None = None,
        insecure: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        transport: str = "auto",
    ) -> None:
        self.config = config
        self.key = key
        raw = account if account is not None else key.name
        self.account = _name(raw) if raw is not None else None
        self.box = e2e.BoxKeys.from_secret(key.box_secret)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.session = ClusterSession.from_config(config, key.signer, insecure=insecure, transport=transport)
        self.cluster = self.session.cluster
        self._accounts: dict[str, Account] = {}  # the latest keys seen behind each name
        self._seen_subscribed: set[int] = set()

    @classmethod
    def from_files(cls, config_path: str | Path, key_path: str | Path, **kwargs: Any) -> ChatClient:
        """Load the cluster config and the user key file (ConfigError / KeyFileError if unusable)."""
        return cls(load_config(config_path), load_user_key(key_path), **kwargs)

    async def __aenter__(self) -> ChatClient:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def f(self) -> int:
        return self.cluster.quorums.f

    @property
    def view(self) -> int:
        """The highest view seen in accepted replies."""
        return self.session.view

    # ---- connecting

    async def connect(self) -> None:
        """Open a stream to every replica and wait until enough are up: all of them, or 2f+1 (a
        one-round read needs that many) after a short grace, or f+1 (fewer can never give an
        accepted result) once the missing ones have been asked why. ClusterUnreachable otherwise.
        Streams that are down keep reconnecting in the background."""
        await self.session.connect()
        n, need, quorum = self.cluster.n, self.f + 1, 2 * self.f + 1
        start = time.monotonic()
        failures: dict[int, str] | None = None
        while True:
            up, waited = self._up(), time.monotonic() - start
            if up == n or (up >= quorum and waited >= 0.3):
                return
            if failures is None and waited >= 1.0:
                failures = await self._probe()
            if failures is not None:
                down = [c for c in self.session.conns if not c.up]
                if up >= need:
                    return
                hopeless = sum(c.replica in failures for c in down) > n - need
                if hopeless or waited > self.connect_timeout:
                    # The status call's reason, or where that call works, the stream's own
                    # (a session port that does not answer, a refused session ...).
                    why = {
                        c.replica: failures.get(
                            c.replica, f"{c.session_endpoint or c.endpoint}: {c.last_error}"
                        )
                        for c in down
                    }
                    raise ClusterUnreachable(why, need, up, n, ANSWER)
            await asyncio.sleep(0.02)

    def _up(self) -> int:
        return sum(c.up for c in self.session.conns)

    async def _probe(self, session: ClusterSession | None = None) -> dict[int, str]:
        """Why each replica whose stream is down cannot be reached (a status call to it)."""
        down = [c for c in (session or self.session).conns if not c.up]

        async def one(endpoint: str) -> str | None:
            try:
                await status(endpoint, self.session.ca_pem, timeout=min(2.0, self.connect_timeout))
            except grpc.aio.AioRpcError as exc:
                return f"{endpoint}: {rpc_reason(exc)}"
            except Exception as exc:  # a channel that cannot even be built (bad CA file ...)
                return f"{endpoint}: {rpc_reason(exc)}"
            return None

        reasons = await asyncio.gather(*(one(c.endpoint) for c in down))
        return {c.replica: r for c, r in zip(down, reasons, strict=True) if r is not None}

    async def close(self) -> None:
        await self.session.close()

    # ---- requests

    async def _call(
        self,
        op: bytes,
        *,
        read_only: bool = False,
        on_signed: Callable[[bytes, int, int], None] | None = None,
        receipt: list[bytes] | None = None,
        idempotent: bool | None = None,
    ) -> cpb.ChatResult:
        """Run one operation: the ChatResult f+1 (ordered) or 2f+1 (one-round read) replicas agree
        on. ``receipt`` gets the operation's receipt appended (``client.receipts``)."""
        try:
            reply = await self.session.request(
                op, read_only=read_only, timeout=self.timeout, on_signed=on_signed, idempotent=idempotent
            )
        except RequestFailed as exc:
            raise await self._failure(exc) from None
        if receipt is not None:
            receipt.append(receipts.make(self.cluster.cluster_id, reply))
        return self._result(reply)

    def _result(self, reply: CheckedReply) -> cpb.ChatResult:
        if reply.status != pb.REPLY_OK:
            raise RejectedError(f"the replicas refused the request (status {reply.status})")
        try:
            return e2e.parse_result(reply.result)
        except ValueError:
            raise ChatClientError("the replicas agreed on a result this client cannot parse") from None

    async def _failure(self, exc: RequestFailed, session: ClusterSession | None = None) -> ChatClientError:
        """A request that got no agreed result in time: unreachable replicas or disagreement?

        With replicas down and no reply at all, or fewer than f+1 streams up, the likely cause is
        the cluster lacking the 2f+1 live replicas it needs to order anything: name who is down
        (a status call to each says why; the stream's own last error if that call succeeds)."""
        session = session or self.session
        up = sum(c.up for c in session.conns)
        if exc.unreachable or up < self.cluster.n:
            failures = await self._probe(session)
            if failures and (not exc.replies or up < self.f + 1):
                return ClusterUnreachable(failures, 2 * self.f + 1, up, self.cluster.n, ORDER)
        return NoAgreement(exc.detail)

    def me(self) -> str:
        if self.account is None:
            raise UsageError("no account chosen: register one, or name the account to act as")
        return self.account

    def _check(self, result: cpb.ChatResult, expect: str, *, target: str = "") -> None:
        """Raise the typed error for an app refusal (or an unexpected result kind)."""
        which = result.WhichOneof("result")
        if which == expect:
            return
        if which != "error":
            raise ChatClientError(f"the replicas answered {which!r} where {expect!r} was expected")
        err = result.error
        code = err.code
        me = self.account or "?"
        if code == _Code.NAME_TAKEN:
            raise NameTaken(f"name '{target}' is taken", "NAME_TAKEN")
        if code == _Code.NO_SUCH_RECIPIENT:
            raise NoSuchUser(f"no such user: '{target}'", "NO_SUCH_RECIPIENT")
        if code == _Code.NO_SUCH_ACCOUNT:
            text = f"account '{me}' does not exist (not registered, or deleted)"
            raise NoSuchAccount(text, "NO_SUCH_ACCOUNT")
        if code == _Code.NOT_OWNER:
            raise NotOwner(f"this key does not own account '{me}'", "NOT_OWNER")
        name = _Code.Name(code) if code in _Code.values() else str(code)
        raise RejectedError(f"{expect or 'request'} refused: {err.message} ({name})", name)

    # ---- operations

    async def register(self, name: str, *, receipt: list[bytes] | None = None) -> str:
        """Bind ``name`` to this key; returns the canonical name. Registering a name this key
        already holds (e.g. a retry from another process) succeeds again (its receipt is then the
        refusal's: proof of the order, see docs/CHAT.md). ``receipt`` gets the receipt appended."""
        n = _name(name)
        result = await self._call(e2e.register_op(n, self.box.public), receipt=receipt)
        if result.WhichOneof("result") == "error" and result.error.code == _Code.NAME_TAKEN:
            with contextlib.suppress(NoSuchUser):
                acct = await self.lookup(n)
                if (acct.signing_key, acct.box_key) == (self.key.signing_public, self.box.public):
                    self.account = self.account or acct.name
                    return acct.name
        self._check(result, "registered", target=n)
        if self.account is None:
            self.account = result.registered.name
        return result.registered.name

    async def accounts(self, pattern: str = "*", page_size: int = 100) -> AsyncIterator[Account]:
        """Accounts matching ``pattern`` (``*`` any run, ``?`` one character), sorted by name,
        fetched a page at a time."""
        pat = normalize_pattern(pattern)
        if pat is None:
            raise UsageError(f"invalid pattern {pattern!r}: name characters plus '*' and '?', at most 64")
        after = ""
        while True:
            result = await self._call(e2e.list_op(pat, page_size, after), read_only=True)
            self._check(result, "accounts")
            for a in result.accounts.accounts:
                acct = Account(a.name, a.signing_key, a.box_key)
                self._accounts[a.name] = acct
                yield acct
            after = result.accounts.next_after
            if not after:
                return

    async def lookup(self, name: str) -> Account:
        """The account called ``name``; NoSuchUser if there is none."""
        n = _name(name, "user name")
        async for acct in self.accounts(n):  # a pattern without wildcards matches the name only
            if acct.name == n:
                return acct
        raise NoSuchUser(f"no such user: '{n}'", "NO_SUCH_RECIPIENT")

    async def send(
        self,
        to: str,
        text: str | bytes,
        *,
        check: Callable[[Account], None] | None = None,
        on_signed: Callable[[bytes, int, int, Account], None] | None = None,
        known: Account | None = None,
    ) -> Sent:
        """Encrypt ``text`` to ``to``'s box key and send it, signed, as our account.

        ``check(account)`` sees the recipient's keys before anything is encrypted to them (each time
        they are looked up) and may refuse by raising (the CLI's pinned keys: ``KeyChanged``).
        ``on_signed(raw, session, timestamp, account)`` gets the exact signed request before each
        transmission (the CLI's outbox); if the send then ends without an agreed answer, this client
        moves to a new session, so the stored request can be resent later as is (``resend``).
        ``known``: the recipient's keys as the caller last saw them (the CLI's pins), used without a
        lookup; if they are no longer the name's keys the replicas refuse the send and the keys
        are looked up."""
        me = self.me()
        n = _name(to, "user name")
        plaintext = text.encode() if isinstance(text, str) else text
        if len(plaintext) > e2e.MAX_PLAINTEXT:
            raise UsageError(f"message too long: {len(plaintext)} bytes, at most {e2e.MAX_PLAINTEXT}")
        for attempt in range(2):
            acct = (known if attempt == 0 else None) or self._accounts.get(n) or await self.lookup(n)
            if check is not None:
                check(acct)
            op = e2e.encrypt_send_op(me, self.box, n, acct.box_key, plaintext)
            signed: list[bytes] = []

            def keep(
                raw: bytes, session: int, timestamp: int, acct: Account = acct, signed: list[bytes] = signed
            ) -> None:
                signed.append(raw)
                if on_signed is not None:
                    on_signed(raw, session, timestamp, acct)

            proof: list[bytes] = []
            result = await self._call(op, on_signed=keep, receipt=proof)
            stale_key = result.WhichOneof("result") == "error" and (
                result.error.code == _Code.RECIPIENT_KEY_MISMATCH
            )
            if stale_key and attempt == 0:  # the name changed hands since we cached its key
                self._accounts.pop(n, None)
                continue
            self._check(result, "sent", target=n)
            s = result.sent
            return Sent(
                n,
                s.id,
                s.seq,
                s.timestamp_us,
                message_ref(signed[-1]),
                acct.signing_key,
                acct.box_key,
                proof[-1],
            )
        raise AssertionError("unreachable")

    def sign_send(self, to: Account, text: str | bytes) -> tuple[bytes, int, int]:
        """Encrypt ``text`` to ``to``'s keys (as the caller knows them: the CLI's pins) and sign the
        send request without transmitting it: ``(raw, session, timestamp)`` for ``resend`` later,
        when the cluster cannot be reached now. If ``to``'s keys changed meanwhile, the replicas
        refuse it (``RejectedError``: not delivered)."""
        plaintext = text.encode() if isinstance(text, str) else text
        if len(plaintext) > e2e.MAX_PLAINTEXT:
            raise UsageError(f"message too long: {len(plaintext)} bytes, at most {e2e.MAX_PLAINTEXT}")
        op = e2e.encrypt_send_op(self.me(), self.box, to.name, to.box_key, plaintext)
        return self.session.sign_unsent(op)

    async def resend(self, raw: bytes, session: int, timestamp: int, recipient: str) -> Sent:
        """Send an earlier signed send request again, exactly as stored (never re-signed), over a
        session of its own id, until its fate is known: ``Sent`` if it executed (now, or before: the
        replicas answer a repeat from their client table), ``RejectedError`` if the replicas agreed
        to refuse it (it was not delivered), ``FateUnknown`` if they refuse it as stale (it can
        never execute now but may have before), ``ClusterUnreachable``/``NoAgreement`` if there is
        no agreed answer yet (try again later)."""
        config = self.config
        pinned = ClusterSession(
            self.cluster,
            [r.endpoint for r in config.replicas],
            self.key.signer,
            ca_pem=self.session.ca_pem,
            session=session,
            session_endpoints=[c.session_endpoint for c in self.session.conns],
        )
        await pinned.connect()
        try:
            try:
                reply = await pinned.resend(raw, timestamp, timeout=self.timeout)
            except RequestFailed as exc:
                raise await self._failure(exc, pinned) from None
        finally:
            await pinned.close()
        if reply is None or reply.status == pb.REPLY_STALE_TIMESTAMP:
            why = (
                "its session has run a later request" if reply is None else "the replicas forgot its session"
            )
            raise FateUnknown(
                f"resent message refused as stale ({why}): it may or may not have been delivered"
            )
        self.session.last_seq = max(self.session.last_seq, reply.seq)
        result = self._result(reply)
        self._check(result, "sent", target=recipient)
        s = result.sent
        proof = receipts.make(self.cluster.cluster_id, reply)
        return Sent(recipient, s.id, s.seq, s.timestamp_us, message_ref(raw), receipt=proof)

    async def fetch(self, after_id: int = 0, limit: int = 0) -> tuple[list[Message], bool]:
        """One page of undelivered messages with id > ``after_id``, verified and decrypted, and
        whether more remain. Nothing is acknowledged."""
        me = self.me()
        result = await self._call(e2e.fetch_op(me, after_id, limit), read_only=True)
        self._check(result, "messages")
        return [self._open(m, me) for m in result.messages.messages], result.messages.more

    def _open(self, m: cpb.ChatDelivered, me: str) -> Message:
        try:
            got = e2e.open_delivered(m, self.cluster.cluster_id, me, self.box, self.session.verifier)
        except e2e.E2EError as exc:
            return Message(m.id, m.seq, m.timestamp_us, "?", me, b"", "", str(exc), sha256(m.signed))
        text = got.plaintext.decode("utf-8", errors="replace")
        ref = sha256(m.signed)
        return Message(
            m.id, m.seq, m.timestamp_us, got.sender, me, got.sender_key, text, None, ref, got.sender_box_key
        )

    async def inbox(self) -> list[Message]:
        """Every undelivered message, oldest first (all pages). Acknowledge with ``ack``."""
        out: list[Message] = []
        after = 0
        while True:
            page, more = await self.fetch(after)
            out.extend(page)
            if page:
                after = page[-1].id
            if not more or not page:
                return out

    async def ack(self, up_to_id: int) -> int:
        """Forget delivered messages with id <= ``up_to_id`` (idempotent); returns how many remain."""
        result = await self._call(e2e.ack_op(self.me(), up_to_id), idempotent=True)  # acking twice: no-op
        self._check(result, "acked")
        return result.acked.remaining

    async def delete_account(self, *, receipt: list[bytes] | None = None) -> int:
        """Delete our account (its undelivered messages go with it); returns how many were dropped.
        ``receipt`` gets the receipt appended."""
        me = self.me()
        result = await self._call(e2e.delete_op(me), receipt=receipt)
        self._check(result, "deleted", target=me)
        return result.deleted.dropped

    # ---- live delivery

    async def messages(
        self,
        *,
        ack: bool = True,
        poll_every: float = POLL_EVERY,
        caught_up: asyncio.Event | None = None,
        keep: Callable[[Message], None] | None = None,
    ) -> AsyncGenerator[Message, None]:
        """Every undelivered message and then each new one, as it arrives, forever.

        With ``ack``, what the consumer has taken is acknowledged (so it is not delivered again)
        after each page and before waiting for news, and when the consumer closes the iterator
        (``aclose()``, e.g. via ``contextlib.aclosing``; a garbage-collected iterator is closed
        too). ``keep(message)`` runs before a message is handed over, so it counts as taken only
        once ``keep`` returned: store it durably there. If ``keep`` raises, the iteration ends with
        that exception and the message is not acknowledged (it is delivered again next time).
        Only one ``messages()`` iterator per client at a time (they share the push queue).
        ``caught_up`` is set whenever everything undelivered so far has been handed over.
        """
        me = self.me()
        await self._subscribe()
        after = 0  # highest id handed to the consumer
        acked = 0
        try:
            while True:
                while True:  # catch up: fetch until nothing is left after `after`
                    page, more = await self.fetch(after)
                    for m in page:
                        if keep is not None:
                            keep(m)
                        after = m.id
                        yield m
                    if ack and after > acked:
                        await self.ack(after)
                        acked = after
                    if not more or not page:
                        break
                if caught_up is not None:
                    caught_up.set()
                await self._news(me, after, poll_every)
        except GeneratorExit:  # closed by the consumer: what it took is done
            if ack and after > acked:
                with contextlib.suppress(ChatClientError):
                    await self.ack(after)
            raise

    async def _subscribe(self) -> None:
        """Prove our key to the replicas; f+1 must confirm (a push counts only when f+1 sent it)."""
        try:
            await self.session.subscribe(count=self.f + 1, timeout=self.connect_timeout)
        except TimeoutError:
            if self.session.auth_errors:
                replica, why = self.session.auth_errors[-1]
                raise ChatClientError(f"replica {replica} refused the push subscription: {why}") from None
            failures = await self._probe()
            subscribed = self._subscribed()
            raise ClusterUnreachable(failures, self.f + 1, subscribed, self.cluster.n, LIVE) from None
        self._seen_subscribed = {c.replica for c in self.session.conns if c.subscribed}

    def _subscribed(self) -> int:
        return sum(c.subscribed for c in self.session.conns)

    async def _news(self, me: str, after: int, poll_every: float) -> None:
        """Until there may be something new: a push vouched for by f+1 replicas of a message after
        ``after``, a stream that (re)subscribed (it may have missed pushes), or ``poll_every``.
        Also as soon as a stream or subscription is lost: the fetch that follows says at once
        whether the cluster still answers (rather than at the next poll, up to ``poll_every`` later)."""
        deadline = time.monotonic() + poll_every
        while True:
            now = {c.replica for c in self.session.conns if c.subscribed}
            fresh, lost = now - self._seen_subscribed, self._seen_subscribed - now
            self._seen_subscribed = now
            if fresh or lost:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                async with asyncio.timeout(min(left, 0.25)):  # races a push (then chat never quit)
                    push = await self.session.pushes.get()
            except TimeoutError:
                continue
            if push.recipient == me and push.message_id > after:
                # f+1 replicas vouch that seq committed: have the fetch wait until it executed.
                self.session.last_seq = max(self.session.last_seq, push.seq)
                return


# ---- synchronous wrapper -----------------------------------------------------------------------


class SyncChatClient:
    """``ChatClient`` for scripts, blocking. Its event loop runs in a daemon thread, so the streams
    stay up (and pushes arrive) between calls. Use as a context manager."""

    def __init__(self, config: ClusterConfig, key: UserKey, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bftchat-client", daemon=True)
        self._thread.start()

        async def make() -> ChatClient:  # built on the loop that will run its channels
            return ChatClient(config, key, **kwargs)

        self._client = self._run(make)
        self._closed = False

    @classmethod
    def from_files(cls, config_path: str | Path, key_path: str | Path, **kwargs: Any) -> SyncChatClient:
        return cls(load_config(config_path), load_user_key(key_path), **kwargs)

    def _run(self, factory: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        async def call() -> T:
            return await factory()

        fut = asyncio.run_coroutine_threadsafe(call(), self._loop)
        return fut.result(timeout)

    @property
    def client(self) -> ChatClient:
        return self._client

    @property
    def account(self) -> str | None:
        return self._client.account

    def __enter__(self) -> SyncChatClient:
        try:
            self.connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        self._run(self._client.connect)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._client.close, timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def register(self, name: str) -> str:
        return self._run(lambda: self._client.register(name))

    def accounts(self, pattern: str = "*") -> list[Account]:
        async def collect() -> list[Account]:
            return [a async for a in self._client.accounts(pattern)]

        return self._run(collect)

    def lookup(self, name: str) -> Account:
        return self._run(lambda: self._client.lookup(name))

    def send(self, to: str, text: str | bytes) -> Sent:
        return self._run(lambda: self._client.send(to, text))

    def fetch(self, after_id: int = 0, limit: int = 0) -> tuple[list[Message], bool]:
        return self._run(lambda: self._client.fetch(after_id, limit))

    def inbox(self) -> list[Message]:
        return self._run(self._client.inbox)

    def ack(self, up_to_id: int) -> int:
        return self._run(lambda: self._client.ack(up_to_id))

    def delete_account(self) -> int:
        return self._run(self._client.delete_account)

    def messages(self, idle_timeout: float | None = None, *, ack: bool = True) -> Iterator[Message]:
        """Undelivered and then live messages; stops after ``idle_timeout`` seconds without one."""
        agen = self._client.messages(ack=ack)

        async def next_one() -> Message | None:
            try:
                return await asyncio.wait_for(agen.__anext__(), idle_timeout)
            except TimeoutError:
                return None

        try:
            while True:
                m = self._run(next_one)
                if m is None:
                    return
                yield m
        finally:
            self._run(agen.aclose, timeout=10)
