"""The replicated chat application: accounts, end-to-end encrypted messages, inboxes.

A deterministic state machine driven by the PBFT core (see ``bft/app/base.py``): no clocks, no
randomness, no unordered iteration (dicts are only looked up, never iterated for output; ordered
output comes from the sorted name list and the id-ordered inboxes). Operations and results are the
``ChatOp``/``ChatResult`` protobufs of ``proto/bftchat/v1/chat.proto``; docs/CHAT.md gives the
semantics. Every rejection is a ``ChatError`` with a fixed code and fixed text and leaves the state
untouched: checks all come before the first mutation.

The digest is maintained incrementally: an LtHash over one element per account and one per stored
message, combined with the message-id counter, so ``digest()`` costs O(1) whatever the state size.

The snapshot is kept nearly ready too: each account holds its encoded ``ChatAccountRecord`` (as it
is with an empty inbox) and each stored message the encoded head of its ``ChatDelivered`` entry, so
``snapshot()`` only joins cached bytes (a checkpoint runs on the replica's event loop; building a
million protobuf objects there stalled it for seconds). The joined bytes are exactly what
``SerializeToString(deterministic=True)`` of the ``ChatSnapshot`` gives: replicas of different
versions must agree on checkpoint digests (tests/test_chat_props.py checks the equality).
"""

from __future__ import annotations

import bisect
import hashlib
import operator
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress

from google.protobuf.message import DecodeError

from bft.app.base import ExecContext, ExecResult, Request
from bft.app.names import all_canonical, literal_prefix, matches, normalize_name, normalize_pattern
from bft.app.paging import PageIndex, page_of
from bft.crypto import KEY_LEN, SIG_LEN
from bft.lthash import LtHash
from bft.pb.bftchat.v1 import chat_pb2 as cpb
from bft.wire import MAX_REQUEST_BYTES, len_field_head, request_signer_key, uint_field, varint

Code = cpb.ChatError.Code

BOX_KEY_LEN = 32
BOX_OVERHEAD = 40
"""NaCl Box ciphertext = 24-byte nonce + 16-byte tag + plaintext; anything shorter is garbage."""
SNAPSHOT_VERSION = 1

ACCOUNT_COST = 256
"""Bytes an account counts against the state budget: more than its snapshot record takes."""
MESSAGE_OVERHEAD = 128
"""Bytes a stored message counts beyond its signed bytes and signature (ids, times, framing)."""
MAX_STATE_BYTES_CEILING = 3 << 29
"""1.5 GiB: a snapshot (at most the accounted bytes) must stay under protobuf's 2 GiB message limit."""

_U64 = struct.Struct(">Q")
_MSG_HEAD = struct.Struct(">QQQI")
_DIGEST_DOMAIN = b"bftchat-chat-state-v1\0"
# ChatSnapshot / ChatAccountRecord / ChatDelivered field numbers (proto/bftchat/v1/chat.proto).
_SNAP_VERSION, _SNAP_NEXT_ID, _SNAP_ACCOUNTS = 1, 2, 3
_REC_NAME, _REC_SIGNING_KEY, _REC_BOX_KEY, _REC_INBOX, _REC_CREATED = 1, 2, 3, 4, 5
_DLV_ID, _DLV_SEQ, _DLV_TS, _DLV_SIGNED, _DLV_SIGNATURE = 1, 2, 3, 4, 5
_SIG_HEAD = len_field_head(_DLV_SIGNATURE, SIG_LEN)
_RECORD_TAG = varint((_SNAP_ACCOUNTS << 3) | 2)


@dataclass(frozen=True, slots=True)
class ChatLimits:
    """Resource limits. Part of the cluster configuration: every replica must use the same ones."""

    max_op_bytes: int = 66 * 1024  # a full 64 KiB body plus names and keys
    max_body_bytes: int = 64 * 1024  # ciphertext, nonce and tag included
    max_inbox: int = 10_000  # undelivered messages per recipient
    max_accounts_per_key: int = 4
    list_page: int = 100
    list_page_max: int = 1000
    list_scan_max: int = 10_000  # names examined per List call: bounds the cost of `*x` patterns
    fetch_page: int = 100
    fetch_page_max: int = 1000
    fetch_bytes_max: int = 1 << 20  # signed bytes per Fetch page (at least one message is returned)
    # Quotas. Keys are free, so per-key limits hold only under global ones; all are functions of the
    # replicated state and the batch time, so every replica refuses the same operations.
    max_state_bytes: int = 1 << 30  # accounted bytes of all accounts and undelivered messages
    max_key_bytes: int = 64 << 20  # accounted bytes of undelivered messages one signing key sent
    register_window_s: int = 60  # at most register_max accounts alive that were created within...
    register_max: int = 2_000  # ...any window of this many seconds of batch time, cluster-wide

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) < 1:
                raise ValueError(f"chat limit {name} must be positive")
        if self.max_state_bytes > MAX_STATE_BYTES_CEILING:
            raise ValueError(
                f"max_state_bytes at most {MAX_STATE_BYTES_CEILING}: a snapshot must stay one protobuf"
            )


@dataclass(frozen=True, slots=True)
class NewMessage:
    """Event of an executed Send: tells the runtime whom to notify. Carries no content."""

    recipient: str
    recipient_key: bytes  # the recipient's Ed25519 signing key: the runtime's handle on the session
    message_id: int
    seq: int


@dataclass(frozen=True, slots=True)
class _Message:
    id: int
    seq: int
    timestamp_us: int
    signed: bytes
    signature: bytes
    element: bytes  # its LtHash element, kept (36 bytes) so removing it needs no rehash of the body
    sender: bytes  # the signing key that sent it (inside ``signed``): whose quota it uses
    cost: int  # accounted bytes (see ``_message_cost``)
    head: bytes  # its snapshot entry up to ``signed`` (see ``_delivered_head``); ``signed`` etc. follow


def _new_message(
    msg_id: int, seq: int, ts: int, signed: bytes, sig: bytes, element: bytes, sender: bytes, cost: int
) -> _Message:
    return _Message(
        msg_id, seq, ts, signed, sig, element, sender, cost, _delivered_head(msg_id, seq, ts, signed, sig)
    )


def _sig_head(sig: bytes) -> bytes:
    """The signature field's tag and length (nothing when empty): the piece between signed and sig."""
    if len(sig) == SIG_LEN:
        return _SIG_HEAD
    return len_field_head(_DLV_SIGNATURE, len(sig)) if sig else b""


def _delivered_head(msg_id: int, seq: int, ts: int, signed: bytes, sig: bytes) -> bytes:
    """A stored message's ``inbox`` entry of its ``ChatAccountRecord`` (tag, length, the ChatDelivered
    fields) up to the content of ``signed``; ``signed``, ``_sig_head(sig)`` and ``sig`` complete it."""
    body = uint_field(_DLV_ID, msg_id) + uint_field(_DLV_SEQ, seq) + uint_field(_DLV_TS, ts)
    if signed:
        body += len_field_head(_DLV_SIGNED, len(signed))
    size = len(body) + len(signed) + len(_sig_head(sig)) + len(sig)
    return len_field_head(_REC_INBOX, size) + body


@dataclass(slots=True)
class _Account:
    name: str
    signing_key: bytes
    box_key: bytes
    created_us: int  # batch time of the registration
    # Undelivered messages, ascending id (= commit order). An empty inbox is the shared empty tuple, not
    # a list of its own: most accounts have none, and each list is 72 bytes and one more object every
    # full garbage collection walks (tuples of nothing are not tracked).
    inbox: list[_Message] | tuple[_Message, ...]
    record: bytes  # its snapshot record as it is with an empty inbox (see ``_account_record``)
    split: int  # where in ``record`` the inbox entries go (before created_us)
    senders: dict[bytes, int] = field(default_factory=dict)  # messages in the inbox per sender key (derived)
    page: int = 0  # its checkpoint page (derived from the name and the page count)


def _new_account(name: str, signing_key: bytes, box_key: bytes, created_us: int) -> _Account:
    """A just-registered account: no messages yet."""
    record, split = _account_record(name, signing_key, box_key, created_us)
    return _Account(name, signing_key, box_key, created_us, (), record, split)


def _account_record(name: str, signing_key: bytes, box_key: bytes, created_us: int) -> tuple[bytes, int]:
    """The account's ``accounts`` entry of the ChatSnapshot with an empty inbox, and the offset where
    the inbox entries go (fields are written in number order: inbox, 4, comes before created_us, 5)."""
    raw = name.encode()
    body = len_field_head(_REC_NAME, len(raw)) + raw if raw else b""
    if signing_key:
        body += len_field_head(_REC_SIGNING_KEY, len(signing_key)) + signing_key
    if box_key:
        body += len_field_head(_REC_BOX_KEY, len(box_key)) + box_key
    tail = uint_field(_REC_CREATED, created_us)
    head = len_field_head(_SNAP_ACCOUNTS, len(body) + len(tail))
    return head + body + tail, len(head) + len(body)


def _record_with_inbox(acct: _Account) -> bytes:
    """The account's snapshot record with its inbox entries spliced in before ``created_us``."""
    record, split = acct.record, acct.split
    inner = [record[_record_start(record) : split]]
    extend = inner.extend
    for m in acct.inbox:
        sig = m.signature
        extend((m.head, m.signed, _sig_head(sig), sig))
    inner.append(record[split:])
    return len_field_head(_SNAP_ACCOUNTS, sum(map(len, inner))) + b"".join(inner)


def _message_page(recipient: str, msg_id: int, count: int) -> int:
    """The checkpoint page a message is filed on: by recipient and id, not with its account."""
    return page_of(recipient.encode() + b"\0" + _U64.pack(msg_id), count)


_FILED_TAG, _FILED_RECIPIENT, _FILED_MESSAGE = 4, 1, 2  # ChatSnapshot.messages, ChatFiledMessage fields


def _filed_message(recipient: str, m: _Message) -> list[bytes]:
    """A message's ``ChatSnapshot.messages`` entry (a ChatFiledMessage) as pieces to join: the cached
    ``ChatDelivered`` head re-tagged as field 2, the recipient before it."""
    start = _record_start(m.head)
    delivered = [m.head[start:], m.signed, _sig_head(m.signature), m.signature]
    size = sum(map(len, delivered))
    raw = recipient.encode()
    inner = [
        len_field_head(_FILED_RECIPIENT, len(raw)),
        raw,
        len_field_head(_FILED_MESSAGE, size),
        *delivered,
    ]
    return [len_field_head(_FILED_TAG, sum(map(len, inner))), *inner]


_RECORD_OF = operator.attrgetter("record")
_INBOX_OF = operator.attrgetter("inbox")


def _record_start(record: bytes) -> int:
    """Where the content of an account record starts: after its tag (one byte) and length varint."""
    i = 1
    while record[i] & 0x80:
        i += 1
    return i + 1


class _Reject(Exception):
    """An operation refused before any mutation; becomes a ChatError result."""

    def __init__(self, code: cpb.ChatError.Code, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def _account_element(name: str, signing_key: bytes, box_key: bytes, created_us: int) -> bytes:
    raw = name.encode()
    return b"chat-acct\0" + bytes((len(raw),)) + raw + signing_key + box_key + _U64.pack(created_us)


def _message_element(recipient: str, msg_id: int, seq: int, ts: int, signed: bytes, sig: bytes) -> bytes:
    raw = recipient.encode()
    h = hashlib.sha256(bytes((len(raw),)) + raw)
    h.update(_MSG_HEAD.pack(msg_id, seq, ts, len(signed)))
    h.update(signed)
    h.update(sig)
    return b"chat-msg" + h.digest()


def _message_cost(signed: bytes, signature: bytes) -> int:
    return len(signed) + len(signature) + MESSAGE_OVERHEAD


def _encode(result: cpb.ChatResult) -> bytes:
    return result.SerializeToString(deterministic=True)


def error_result(code: cpb.ChatError.Code, text: str) -> bytes:
    return _encode(cpb.ChatResult(error=cpb.ChatError(code=code, message=text)))


class ChatApp:
    """The chat state machine. ``ChatApp()`` uses the default limits."""

    def __init__(self, limits: ChatLimits | None = None) -> None:
        self.limits = limits or ChatLimits()
        self._accounts: dict[str, _Account] = {}
        self._names: list[str] = []  # sorted account names, for List
        self._ordered: list[_Account] = []  # the accounts in the same order, for snapshot() (derived)
        self._per_key: dict[bytes, int] = {}  # accounts owned by each signing key (derived)
        self._next_id = 1
        self._stored = 0  # undelivered messages in total (derived)
        self._state_bytes = 0  # accounted bytes of accounts and messages (derived)
        self._key_bytes: dict[bytes, int] = {}  # accounted bytes of stored messages per sender key (derived)
        self._recent: list[int] = []  # sorted created_us of live accounts, pruned below the window (derived)
        self._hash = LtHash()
        self._digest: bytes | None = None
        # Accounts and messages by checkpoint page (derived; see page()).
        self._pages: PageIndex[tuple[str, int], object] = PageIndex()
        # Per page, its accounts' records joined in name order, kept until an account on that page
        # comes or goes: account records never change, and a send dirties a page whose accounts
        # (about 60 of them at a million) would otherwise be joined again at every checkpoint.
        self._account_blocks: dict[int, bytes] = {}

    # ---- Application protocol -----------------------------------------------------------------

    @property
    def max_op_bytes(self) -> int:
        return self.limits.max_op_bytes

    def execute(self, request: Request, ctx: ExecContext) -> ExecResult:
        try:
            op = self._parse(request.op)
            kind = op.WhichOneof("op")
            if kind == "register":
                return ExecResult(self._register(request, op.register, ctx))
            if kind == "send":
                return self._send(request, op.send, ctx)
            if kind == "ack":
                return ExecResult(self._ack(request, op.ack))
            if kind == "delete":
                return ExecResult(self._delete(request, op.delete))
            return ExecResult(self._read(request, op))
        except _Reject as rej:
            return ExecResult(error_result(rej.code, rej.text))

    def query(self, request: Request) -> bytes:
        try:
            return self._read(request, self._parse(request.op))
        except _Reject as rej:
            return error_result(rej.code, rej.text)

    def digest(self) -> bytes:
        if self._digest is None:
            state = _DIGEST_DOMAIN + _U64.pack(self._next_id) + self._hash.state()
            self._digest = hashlib.sha256(state).digest()
        return self._digest

    def snapshot(self) -> bytes:
        """The ``ChatSnapshot``'s deterministic serialisation, joined from the cached pieces.

        Every step that visits all accounts runs in C (``map``, ``attrgetter``, ``compress``); Python
        only touches the accounts with undelivered messages."""
        accts = self._ordered  # not a dict lookup per name: 0.35 s at a million accounts
        parts = [uint_field(_SNAP_VERSION, SNAPSHOT_VERSION) + uint_field(_SNAP_NEXT_ID, self._next_id)]
        parts += map(_RECORD_OF, accts)
        for i in compress(range(len(accts)), map(_INBOX_OF, accts)):
            parts[i + 1] = _record_with_inbox(accts[i])
        return b"".join(parts)

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot's; ValueError, state untouched, on any defect."""
        snap = self._parse_snapshot(data, "chat snapshot")
        if snap.version != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported chat snapshot version {snap.version}")
        records = snap.accounts
        self._load(snap.next_id, records, [rec.name for rec in records])
        self._refile(self._pages.count)

    @staticmethod
    def _parse_snapshot(data: bytes, what: str) -> cpb.ChatSnapshot:
        snap = cpb.ChatSnapshot()
        try:
            snap.ParseFromString(data)
        except (DecodeError, ValueError, RuntimeError):
            raise ValueError(f"malformed {what}") from None
        # Unknown fields were always ignored; dropped now, as the records' encodings below are cached.
        snap.DiscardUnknownFields()
        return snap

    # ---- checkpoint pages (bft/app/paging.py) ----------------------------------------------------
    # An account (without its inbox) is filed under (name, 0) on the page of its name; each
    # undelivered message under (recipient, id) on a page of its own, so a send changes one small
    # page (and page 0, which also holds the version and next_id) whatever the inbox holds.

    def set_page_count(self, count: int) -> None:
        self._refile(count)

    def _refile(self, count: int) -> None:
        items: list[tuple[tuple[str, int], int, object]] = []
        for acct in self._ordered:
            acct.page = page_of(acct.name.encode(), count)
            items.append(((acct.name, 0), acct.page, acct))
            items.extend(((acct.name, m.id), _message_page(acct.name, m.id, count), m) for m in acct.inbox)
        self._pages.reset(count, items)
        self._account_blocks.clear()

    def take_dirty_pages(self) -> set[int]:
        return self._pages.take_dirty()

    def page(self, index: int) -> bytes:
        """A ``ChatSnapshot`` of this page: its accounts without inboxes (sorted by name), then its
        messages (sorted by recipient and id), from cached bytes."""
        members = self._pages.members(index)
        block = self._account_blocks.get(index)
        if block is None:
            names = sorted(k for k in members if not k[1])
            block = self._account_blocks[index] = b"".join(members[k].record for k in names)  # type: ignore[attr-defined]
        out = [block]
        for k in sorted(k for k in members if k[1]):
            out.extend(_filed_message(k[0], members[k]))  # type: ignore[arg-type]
        if index == 0:
            out.insert(
                0, uint_field(_SNAP_VERSION, SNAPSHOT_VERSION) + uint_field(_SNAP_NEXT_ID, self._next_id)
            )
        return b"".join(out)

    def restore_pages(self, pages: Sequence[bytes]) -> None:
        records: list[cpb.ChatAccountRecord] = []
        inboxes: dict[str, list[cpb.ChatDelivered]] = {}
        next_id = 0
        count = len(pages)
        for index, data in enumerate(pages):
            snap = self._parse_snapshot(data, f"chat page {index}")
            if index == 0:
                if snap.version != SNAPSHOT_VERSION:
                    raise ValueError(f"unsupported chat snapshot version {snap.version}")
                next_id = snap.next_id
            elif snap.version or snap.next_id:
                raise ValueError(f"chat page {index} holds global fields")
            names = [rec.name for rec in snap.accounts]
            if (
                not all(map(operator.lt, names, names[1:]))
                or any(page_of(name.encode(), count) != index for name in names)
                or any(len(rec.inbox) for rec in snap.accounts)
            ):
                raise ValueError(f"chat page {index} holds another page's account or is not sorted")
            keys = [(f.recipient, f.message.id) for f in snap.messages]
            if not all(map(operator.lt, keys, keys[1:])) or any(
                _message_page(name, msg_id, count) != index for name, msg_id in keys
            ):
                raise ValueError(f"chat page {index} holds another page's message or is not sorted")
            records.extend(snap.accounts)
            for f in snap.messages:
                inboxes.setdefault(f.recipient, []).append(f.message)
        records.sort(key=operator.attrgetter("name"))
        for rec in records:
            inbox = inboxes.pop(rec.name, None)
            if inbox:
                inbox.sort(key=operator.attrgetter("id"))
                rec.inbox.extend(inbox)
        if inboxes:
            raise ValueError("chat pages hold messages for accounts they do not hold")
        self._load(next_id, records, [rec.name for rec in records])
        self._refile(count)
        self._pages.clean()

    def _load(self, next_id: int, records: Sequence[cpb.ChatAccountRecord], all_names: list[str]) -> None:
        """Replace the state with these account records (sorted by name); ValueError, state
        untouched, on any defect."""
        if next_id < 1:
            raise ValueError("chat snapshot next_id must be at least 1")
        lim = self.limits
        accounts: dict[str, _Account] = {}
        per_key: dict[bytes, int] = {}
        seen_ids: set[int] = set()
        lthash = LtHash()
        elements: list[bytes] = []  # hashed in one pass at the end (one carry mask, not one per add)
        stored = 0
        state_bytes = 0
        key_bytes: dict[bytes, int] = {}
        created: list[int] = []
        signers: dict[bytes, bytes] = {}  # one bytes object per sender key, shared by its messages
        if not all_canonical(all_names) or not all(map(operator.lt, all_names, all_names[1:])):
            raise ValueError("chat snapshot account names invalid or not strictly sorted")
        for rec, name in zip(records, all_names, strict=True):
            # Each field read once: every read of a parsed protobuf field makes a new Python object.
            signing_key, box_key, created_us, delivered = (
                rec.signing_key,
                rec.box_key,
                rec.created_us,
                rec.inbox,
            )
            if len(signing_key) != KEY_LEN or len(box_key) != BOX_KEY_LEN:
                raise ValueError(f"chat snapshot account {name}: bad key length")
            count = per_key.get(signing_key, 0) + 1
            if count > lim.max_accounts_per_key:
                raise ValueError("chat snapshot exceeds accounts per key")
            if len(delivered) > lim.max_inbox:
                raise ValueError(f"chat snapshot inbox of {name} exceeds the limit")
            per_key[signing_key] = count
            inbox: list[_Message] = []
            senders: dict[bytes, int] = {}
            last_id = 0
            for d in delivered:
                msg_id, seq, ts, signed, sig = d.id, d.seq, d.timestamp_us, d.signed, d.signature
                if not (last_id < msg_id < next_id) or msg_id in seen_ids:
                    raise ValueError(f"chat snapshot inbox of {name}: bad message id {msg_id}")
                if len(signed) > MAX_REQUEST_BYTES or len(sig) != SIG_LEN:
                    raise ValueError(f"chat snapshot message {msg_id}: bad size")
                seen_ids.add(msg_id)
                last_id = msg_id
                element = _message_element(name, msg_id, seq, ts, signed, sig)
                sender = request_signer_key(signed)
                sender = signers.setdefault(sender, sender)
                cost = _message_cost(signed, sig)
                # The cached entry head, from the C encoder: the entry minus signed and signature.
                entry = d.SerializeToString(deterministic=True)
                rest = len(signed) + len(_SIG_HEAD) + SIG_LEN
                head = len_field_head(_REC_INBOX, len(entry)) + entry[: len(entry) - rest]
                inbox.append(_Message(msg_id, seq, ts, signed, sig, element, sender, cost, head))
                elements.append(element)
                senders[sender] = senders.get(sender, 0) + 1
                key_bytes[sender] = key_bytes.get(sender, 0) + cost
                state_bytes += cost
            stored += len(inbox)
            state_bytes += ACCOUNT_COST
            created.append(created_us)
            elements.append(_account_element(name, signing_key, box_key, created_us))
            if inbox:
                record, split = _account_record(name, signing_key, box_key, created_us)
            else:  # the usual case, from the C encoder: this record is what snapshot() will write
                content = rec.SerializeToString(deterministic=True)
                record = _RECORD_TAG + varint(len(content)) + content
                split = len(record) - (1 + (created_us.bit_length() + 6) // 7 if created_us else 0)
            accounts[name] = _Account(
                name, signing_key, box_key, created_us, inbox or (), record, split, senders
            )
        lthash.add_many(elements)
        self._accounts, self._names, self._per_key = accounts, all_names, per_key
        self._ordered = list(accounts.values())  # inserted in name order
        self._next_id, self._stored, self._hash, self._digest = next_id, stored, lthash, None
        self._state_bytes, self._key_bytes = state_bytes, key_bytes
        self._recent = sorted(created)  # pruned at the next registration

    # ---- introspection (tests, benchmarks, runtime metrics) -------------------------------------

    @property
    def account_count(self) -> int:
        return len(self._names)

    @property
    def stored_messages(self) -> int:
        return self._stored

    @property
    def state_bytes(self) -> int:
        """Accounted bytes of accounts and undelivered messages (what ``max_state_bytes`` bounds)."""
        return self._state_bytes

    # ---- parsing and authorisation --------------------------------------------------------------

    def _parse(self, data: bytes) -> cpb.ChatOp:
        if len(data) > self.limits.max_op_bytes:
            raise _Reject(Code.OP_TOO_LARGE, f"operation exceeds {self.limits.max_op_bytes} bytes")
        op = cpb.ChatOp()
        try:
            op.ParseFromString(data)
        except (DecodeError, ValueError, RuntimeError):
            raise _Reject(Code.MALFORMED, "operation does not parse") from None
        if op.WhichOneof("op") is None:
            raise _Reject(Code.MALFORMED, "no operation set")
        return op

    def _acting(self, request: Request, raw_name: str) -> _Account:
        """The account the caller acts as, if its signing key owns it."""
        name = normalize_name(raw_name)
        if name is None:
            raise _Reject(Code.INVALID_NAME, "invalid account name")
        acct = self._accounts.get(name)
        if acct is None:
            raise _Reject(Code.NO_SUCH_ACCOUNT, "no such account")
        if acct.signing_key != request.client_key:
            raise _Reject(Code.NOT_OWNER, "account belongs to another key")
        return acct

    def _changed(self) -> None:
        self._digest = None

    # ---- read-only operations -------------------------------------------------------------------

    def _read(self, request: Request, op: cpb.ChatOp) -> bytes:
        kind = op.WhichOneof("op")
        if kind == "list":
            return self._list(op.list)
        if kind == "fetch":
            return self._fetch(request, op.fetch)
        raise _Reject(Code.READ_ONLY, "write operation sent as a read-only query")

    def _list(self, op: cpb.ChatList) -> bytes:
        lim = self.limits
        pattern = normalize_pattern(op.pattern)
        if pattern is None:
            raise _Reject(Code.INVALID_PATTERN, "invalid pattern")
        after = ""
        if op.after:
            cursor = normalize_name(op.after)
            if cursor is None:
                raise _Reject(Code.INVALID_NAME, "invalid cursor")
            after = cursor
        limit = min(op.limit or lim.list_page, lim.list_page_max)
        prefix = literal_prefix(pattern)
        names = self._names
        i = max(bisect.bisect_left(names, prefix), bisect.bisect_right(names, after) if after else 0)
        result = cpb.ChatResult()
        out = result.accounts  # filled in place: building a submessage and copying it in costs more
        out.SetInParent()
        found = scanned = 0
        while i < len(names) and found < limit and scanned < lim.list_scan_max:
            name = names[i]
            if not name.startswith(prefix):
                break
            scanned += 1
            i += 1
            if matches(pattern, name):
                acct = self._accounts[name]
                out.accounts.add(name=name, signing_key=acct.signing_key, box_key=acct.box_key)
                found += 1
        if i < len(names) and scanned and names[i].startswith(prefix):
            out.next_after = names[i - 1]
        return _encode(result)

    def _fetch(self, request: Request, op: cpb.ChatFetch) -> bytes:
        lim = self.limits
        acct = self._acting(request, op.account)
        inbox = acct.inbox
        limit = min(op.limit or lim.fetch_page, lim.fetch_page_max)
        start = bisect.bisect_right(inbox, op.after_id, key=lambda m: m.id)
        result = cpb.ChatResult()
        out = result.messages  # filled in place: copying 1 MiB of messages into a result is slow
        out.pending = len(inbox)
        out.SetInParent()
        size = 0
        end = start
        while end < len(inbox) and end - start < limit:
            m = inbox[end]
            size += len(m.signed)
            if size > lim.fetch_bytes_max and end > start:
                break
            out.messages.add(
                id=m.id, seq=m.seq, timestamp_us=m.timestamp_us, signed=m.signed, signature=m.signature
            )
            end += 1
        out.more = end < len(inbox)
        return _encode(result)

    # ---- writes ---------------------------------------------------------------------------------

    def _register(self, request: Request, op: cpb.ChatRegister, ctx: ExecContext) -> bytes:
        name = normalize_name(op.name)
        if name is None:
            raise _Reject(Code.INVALID_NAME, "invalid account name")
        if len(op.box_key) != BOX_KEY_LEN:
            raise _Reject(Code.INVALID_KEY, "box key must be 32 bytes")
        if name in self._accounts:
            raise _Reject(Code.NAME_TAKEN, "name already taken")
        key = request.client_key
        lim = self.limits
        if self._per_key.get(key, 0) >= lim.max_accounts_per_key:
            raise _Reject(Code.TOO_MANY_ACCOUNTS, "this key owns the maximum number of accounts")
        if self._state_bytes + ACCOUNT_COST > lim.max_state_bytes:
            raise _Reject(Code.STATE_FULL, "the service is at its storage limit")
        # The limit is a function of the state (live accounts and their creation times), not of the
        # history: batch time is monotone, so entries below the window never count again.
        now = ctx.timestamp_us
        recent = self._recent
        del recent[: bisect.bisect_right(recent, now - lim.register_window_s * 1_000_000)]
        if len(recent) >= lim.register_max:
            raise _Reject(Code.RATE_LIMITED, "too many new accounts right now; try again in a minute")
        bisect.insort(recent, now)
        self._state_bytes += ACCOUNT_COST
        acct = self._accounts[name] = _new_account(name, key, op.box_key, now)
        acct.page = page_of(name.encode(), self._pages.count)
        self._pages.add((name, 0), acct.page, acct)
        self._account_blocks.pop(acct.page, None)
        i = bisect.bisect_left(self._names, name)
        self._names.insert(i, name)
        self._ordered.insert(i, acct)
        self._per_key[key] = self._per_key.get(key, 0) + 1
        self._hash.add(_account_element(name, key, op.box_key, now))
        self._changed()
        return _encode(cpb.ChatResult(registered=cpb.ChatRegistered(name=name)))

    def _send(self, request: Request, op: cpb.ChatSend, ctx: ExecContext) -> ExecResult:
        lim = self.limits
        sender = self._acting(request, op.sender)
        to = normalize_name(op.recipient)
        if to is None:
            raise _Reject(Code.INVALID_NAME, "invalid recipient name")
        if len(op.recipient_box_key) != BOX_KEY_LEN or len(op.sender_box_key) != BOX_KEY_LEN:
            raise _Reject(Code.INVALID_KEY, "box keys must be 32 bytes")
        if len(op.ciphertext) > lim.max_body_bytes:
            raise _Reject(Code.BODY_TOO_LARGE, f"ciphertext exceeds {lim.max_body_bytes} bytes")
        if len(op.ciphertext) < BOX_OVERHEAD:
            raise _Reject(Code.BODY_TOO_SMALL, "ciphertext shorter than a Box nonce and tag")
        if op.sender_box_key != sender.box_key:
            raise _Reject(Code.SENDER_KEY_MISMATCH, "sender box key is not the account's")
        rcpt = self._accounts.get(to)
        if rcpt is None:
            raise _Reject(Code.NO_SUCH_RECIPIENT, "no such recipient")
        if op.recipient_box_key != rcpt.box_key:
            raise _Reject(Code.RECIPIENT_KEY_MISMATCH, "recipient box key is not the recipient's current key")
        if len(rcpt.inbox) >= lim.max_inbox:
            raise _Reject(Code.INBOX_FULL, "recipient inbox is full")
        key = request.client_key
        mine = rcpt.senders.get(key, 0)
        others = len(rcpt.senders) - (1 if mine else 0)
        if mine >= lim.max_inbox // (others + 2):
            # Max-min share with room kept for one more sender: k senders get at most max_inbox/(k+1)
            # each, so one sender never fills an inbox and a newcomer always finds space.
            raise _Reject(Code.QUOTA_EXCEEDED, "you have sent this recipient your share of their inbox")
        cost = _message_cost(request.signed, request.signature)
        if self._key_bytes.get(key, 0) + cost > lim.max_key_bytes:
            raise _Reject(Code.QUOTA_EXCEEDED, "your undelivered messages reached your storage quota")
        if self._state_bytes + cost > lim.max_state_bytes:
            raise _Reject(Code.STATE_FULL, "the service is at its storage limit")
        msg_id = self._next_id
        element = _message_element(to, msg_id, ctx.seq, ctx.timestamp_us, request.signed, request.signature)
        signed, sig = request.signed, request.signature
        inbox = rcpt.inbox
        if not isinstance(inbox, list):
            rcpt.inbox = inbox = []
        message = _new_message(msg_id, ctx.seq, ctx.timestamp_us, signed, sig, element, key, cost)
        inbox.append(message)
        self._pages.add((to, msg_id), _message_page(to, msg_id, self._pages.count), message)
        rcpt.senders[key] = mine + 1
        self._key_bytes[key] = self._key_bytes.get(key, 0) + cost
        self._state_bytes += cost
        self._next_id = msg_id + 1
        self._stored += 1
        self._hash.add(element)
        self._pages.touch(0)  # next_id
        self._changed()
        result = cpb.ChatResult(sent=cpb.ChatSent(id=msg_id, seq=ctx.seq, timestamp_us=ctx.timestamp_us))
        return ExecResult(_encode(result), (NewMessage(to, rcpt.signing_key, msg_id, ctx.seq),))

    def _ack(self, request: Request, op: cpb.ChatAck) -> bytes:
        acct = self._acting(request, op.account)
        inbox = acct.inbox
        k = bisect.bisect_right(inbox, op.up_to_id, key=lambda m: m.id)
        if k:
            for m in inbox[:k]:
                self._hash.remove(m.element)
                self._forget(acct, m)
            acct.inbox = inbox = inbox[k:] if k < len(inbox) else ()
            self._stored -= k
            self._changed()
        return _encode(cpb.ChatResult(acked=cpb.ChatAcked(removed=k, remaining=len(inbox))))

    def _delete(self, request: Request, op: cpb.ChatDelete) -> bytes:
        acct = self._acting(request, op.account)
        name, key = acct.name, acct.signing_key
        dropped = len(acct.inbox)
        for m in acct.inbox:
            self._hash.remove(m.element)
            self._forget(acct, m)
        self._state_bytes -= ACCOUNT_COST
        i = bisect.bisect_left(self._recent, acct.created_us)
        if i < len(self._recent) and self._recent[i] == acct.created_us:
            del self._recent[i]  # one entry per live account (equal times are interchangeable)
        self._hash.remove(_account_element(name, key, acct.box_key, acct.created_us))
        del self._accounts[name]
        self._pages.remove((name, 0), acct.page)
        self._account_blocks.pop(acct.page, None)
        i = bisect.bisect_left(self._names, name)
        del self._names[i], self._ordered[i]
        left = self._per_key[key] - 1
        if left:
            self._per_key[key] = left
        else:
            del self._per_key[key]
        self._stored -= dropped
        self._changed()
        return _encode(cpb.ChatResult(deleted=cpb.ChatDeleted(name=name, dropped=dropped)))

    def _forget(self, acct: _Account, m: _Message) -> None:
        """Release a removed message's quota (its sender's count in the inbox, its bytes)."""
        self._pages.remove((acct.name, m.id), _message_page(acct.name, m.id, self._pages.count))
        left = acct.senders[m.sender] - 1
        if left:
            acct.senders[m.sender] = left
        else:
            del acct.senders[m.sender]
        left = self._key_bytes[m.sender] - m.cost
        if left:
            self._key_bytes[m.sender] = left
        else:
            del self._key_bytes[m.sender]
        self._state_bytes -= m.cost
