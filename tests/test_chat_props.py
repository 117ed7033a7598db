"""Property tests: the chat app is deterministic and its digest is a function of the logical state.

Requests are built directly (the app trusts the core's signature check), with a small universe of
keys, names and box keys so that random sequences collide often: names get taken, keys mismatch,
inboxes fill, accounts are deleted and re-registered.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import example, given, settings
from hypothesis import strategies as st

from bft.app.base import ExecContext, Request
from bft.app.chat import ChatApp, ChatLimits
from bft.pb.bftchat.v1 import chat_pb2 as cpb
from client import e2e

KEYS = [hashlib.sha256(b"key%d" % i).digest() for i in range(3)]
BOXES = [hashlib.sha256(b"box%d" % i).digest() for i in range(2)]
NAMES = ["ann", "Ann", "ben", "cat", "dan", "9x"]
LIMITS = ChatLimits(max_inbox=4, max_accounts_per_key=2, list_page_max=3, fetch_page_max=3)


def request(key: int, op: bytes, nonce: int = 0) -> Request:
    """A request as the core would hand it over; `signed` stands in for the real signed bytes."""
    signed = b"REQ" + KEYS[key] + nonce.to_bytes(8, "big") + op
    return Request(KEYS[key], 1, nonce, op, signed, hashlib.sha512(signed).digest())


def send_op(sender: str, to: str, rbox: int, sbox: int, size: int) -> bytes:
    send = cpb.ChatSend(
        sender=sender,
        recipient=to,
        recipient_box_key=BOXES[rbox],
        sender_box_key=BOXES[sbox],
        ciphertext=bytes(size),
    )
    return cpb.ChatOp(send=send).SerializeToString()


keys = st.integers(0, len(KEYS) - 1)
boxes = st.integers(0, len(BOXES) - 1)
ids = st.integers(0, 40)
# Each name has a "natural" owner key and box key, used most of the time, so that most operations
# succeed and the state grows; the rest of the time anything goes.
NATURAL = {"ann": (0, 0), "Ann": (0, 0), "ben": (1, 1), "cat": (2, 0), "dan": (0, 1)}
names = st.sampled_from(list(NATURAL))
any_name = st.sampled_from([*NATURAL, *NATURAL, *NATURAL, "9x"])  # invalid names now and then


@st.composite
def actor(draw: st.DrawFn) -> tuple[str, int, int]:
    """(name, key, box) where key and box usually belong to the name."""
    name = draw(any_name)
    key, box = NATURAL.get(name, (0, 0))
    if draw(st.integers(0, 9)) == 0:
        key = draw(keys)
    if draw(st.integers(0, 9)) == 0:
        box = draw(boxes)
    return name, key, box


@st.composite
def chat_action(draw: st.DrawFn) -> tuple[int, bytes]:
    name, key, box = draw(actor())
    verbs = ["register", "send", "send", "send", "ack", "delete", "fetch", "list", "junk"]
    kind = draw(st.sampled_from(verbs))
    if kind == "register":
        return key, e2e.register_op(name, draw(st.sampled_from([BOXES[box], BOXES[box], b"bad"])))
    if kind == "send":
        to, _, rbox = draw(actor())
        size = draw(st.sampled_from([40, 50, 100, 100, 39]))
        return key, send_op(name, to, rbox, box, size)
    if kind == "ack":
        return key, e2e.ack_op(name, draw(ids))
    if kind == "delete" and draw(st.booleans()):  # deletes at half weight, or the state stays tiny
        return key, e2e.delete_op(name)
    if kind == "fetch":
        return key, e2e.fetch_op(name, draw(ids), draw(st.integers(0, 5)))
    if kind == "list":
        pattern = draw(st.sampled_from(["*", "a*", "?a?", "", "[", "*n"]))
        return key, e2e.list_op(pattern, draw(st.integers(0, 5)))
    return key, draw(st.binary(max_size=12))


ops = chat_action()


SETUP = [(key, e2e.register_op(name, BOXES[box])) for name, (key, box) in NATURAL.items() if name.islower()]
"""Registers every natural account first, so that random operations mostly find their accounts."""


def requests_of(actions: list[tuple[int, bytes]]) -> list[Request]:
    return [request(k, op, i) for i, (k, op) in enumerate(actions)]


# ---- determinism, and incremental digest == digest recomputed from the snapshot ---------------------


@settings(max_examples=40, deadline=None)
@given(st.booleans(), st.lists(ops, min_size=50, max_size=150))
def test_two_replicas_agree_byte_for_byte(setup: bool, actions: list[tuple[int, bytes]]) -> None:
    a, b = ChatApp(LIMITS), ChatApp(LIMITS)
    a.set_page_count(PAGES)
    pages = PageMirror(a)
    # Every state visited: the digest must be a one-to-one function of the snapshot.
    by_digest = {a.digest(): a.snapshot()}
    by_snapshot = {a.snapshot(): a.digest()}
    for i, req in enumerate(requests_of(SETUP + actions if setup else actions)):
        ctx = ExecContext(seq=i + 1, index=i % 3, timestamp_us=1000 * i)
        ra, rb = a.execute(req, ctx), b.execute(req, ctx)
        pages.check()
        assert ra == rb
        assert a.query(req) == b.query(req)
        digest, snap = a.digest(), a.snapshot()
        assert digest == b.digest()
        assert by_digest.setdefault(digest, snap) == snap
        assert by_snapshot.setdefault(snap, digest) == digest
        if i % 50 == 49:
            check_restore(a)
    assert a.snapshot() == b.snapshot()
    check_restore(a)


def check_restore(app: ChatApp) -> None:
    fresh = ChatApp(LIMITS)
    fresh.restore(app.snapshot())
    assert fresh.digest() == app.digest()
    assert fresh.snapshot() == app.snapshot()
    assert fresh.stored_messages == app.stored_messages
    # The same state through its checkpoint pages: same digest, same pages, nothing left changed.
    pages = [app.page(i) for i in range(PAGES)] if app._pages.count == PAGES else None
    if pages is not None:
        paged = ChatApp(LIMITS)
        paged.set_page_count(PAGES)
        paged.restore_pages(pages)
        assert paged.digest() == app.digest() and paged.snapshot() == app.snapshot()
        assert [paged.page(i) for i in range(PAGES)] == pages and not paged.take_dirty_pages()


PAGES = 8


class PageMirror:
    """The pages as a checkpoint would have them, updated from the reported changes only: equal to
    the app's pages after every operation, or a change went unreported (and replicas would certify
    a stale page)."""

    def __init__(self, app: ChatApp) -> None:
        self.app = app
        self.pages = [b""] * PAGES
        self.check()

    def check(self) -> None:
        for i in self.app.take_dirty_pages():
            self.pages[i] = self.app.page(i)
            assert self.pages[i] == reference_page(self.app, i)  # the encoding (pages that change)
        assert self.pages == [self.app.page(i) for i in range(PAGES)]  # the reporting (all pages)


def reference_page(app: ChatApp, index: int) -> bytes:
    """What page ``index`` must be: the protobuf, built field by field from the app's state (accounts of
    the page without inboxes, then the page's messages by recipient and id), serialised deterministically."""
    from bft.app.chat import _message_page
    from bft.app.paging import page_of

    snap = cpb.ChatSnapshot(version=1, next_id=app._next_id) if index == 0 else cpb.ChatSnapshot()
    for name in app._names:
        acct = app._accounts[name]
        if page_of(name.encode(), PAGES) == index:
            snap.accounts.add(
                name=name, signing_key=acct.signing_key, box_key=acct.box_key, created_us=acct.created_us
            )
    for name in app._names:
        for m in app._accounts[name].inbox:
            if _message_page(name, m.id, PAGES) == index:
                snap.messages.add(recipient=name).message.CopyFrom(
                    cpb.ChatDelivered(
                        id=m.id,
                        seq=m.seq,
                        timestamp_us=m.timestamp_us,
                        signed=m.signed,
                        signature=m.signature,
                    )
                )
    return snap.SerializeToString(deterministic=True)


# ---- equal logical state <=> equal digest, whatever the history -----------------------------------


@dataclass
class Model:
    """The logical state, rebuilt from results alone: independent of the app's data structures."""

    accounts: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    inboxes: dict[str, list[tuple[int, bytes, bytes]]] = field(default_factory=dict)
    next_id: int = 1

    def apply(self, req: Request, result: cpb.ChatResult) -> None:
        op = cpb.ChatOp()
        op.ParseFromString(req.op)
        kind = result.WhichOneof("result")
        if kind == "registered":
            self.accounts[result.registered.name] = (req.client_key, op.register.box_key)
            self.inboxes[result.registered.name] = []
        elif kind == "sent":
            assert result.sent.id == self.next_id
            self.next_id += 1
            self.inboxes[op.send.recipient.lower()].append((result.sent.id, req.signed, req.signature))
        elif kind == "acked":
            inbox = self.inboxes[op.ack.account.lower()]
            keep = [m for m in inbox if m[0] > op.ack.up_to_id]
            assert result.acked.removed == len(inbox) - len(keep)
            self.inboxes[op.ack.account.lower()] = keep
        elif kind == "deleted":
            assert result.deleted.dropped == len(self.inboxes[result.deleted.name])
            del self.accounts[result.deleted.name]
            del self.inboxes[result.deleted.name]

    def canonical(self) -> tuple[object, ...]:
        return (self.next_id, sorted(self.accounts.items()), sorted(self.inboxes.items()))


small_ops = st.one_of(
    st.tuples(keys, st.builds(e2e.register_op, st.sampled_from(["ann", "ben"]), st.sampled_from(BOXES))),
    st.tuples(keys, st.builds(e2e.delete_op, st.sampled_from(["ann", "ben"]))),
    st.tuples(st.just(0), st.builds(send_op, st.just("ann"), st.just("ben"), boxes, boxes, st.just(40))),
    st.tuples(keys, st.builds(e2e.ack_op, st.sampled_from(["ann", "ben"]), st.integers(0, 3))),
)


def run_model(actions: list[tuple[int, bytes]]) -> tuple[ChatApp, Model]:
    app, model = ChatApp(LIMITS), Model()
    for k, op in actions:
        req = request(k, op)  # same nonce: equal sends carry equal bytes, so states can coincide
        out = app.execute(req, ExecContext(seq=1, index=0, timestamp_us=0))
        model.apply(req, e2e.parse_result(out.result))
    return app, model


@settings(max_examples=400, deadline=None)
@given(st.lists(small_ops, max_size=12), st.lists(small_ops, max_size=12))
def test_digest_equal_iff_state_equal(xs: list[tuple[int, bytes]], ys: list[tuple[int, bytes]]) -> None:
    a, ma = run_model(xs)
    b, mb = run_model(ys)
    same = ma.canonical() == mb.canonical()
    assert (a.digest() == b.digest()) == same
    assert (a.snapshot() == b.snapshot()) == same


def test_known_different_histories_same_state() -> None:
    reg_ann = (0, e2e.register_op("ann", BOXES[0]))
    reg_ben = (1, e2e.register_op("ben", BOXES[0]))
    send = (0, send_op("ann", "ben", 0, 0, 40))
    pairs = [
        ([], [reg_ann, (0, e2e.delete_op("ann"))]),
        ([reg_ann, reg_ben], [reg_ben, reg_ann]),
        (
            [reg_ann, reg_ben, send, (1, e2e.ack_op("ben", 1))],
            [reg_ben, reg_ann, send, (1, e2e.delete_op("ben")), reg_ben],
        ),
        ([reg_ann, reg_ben], [reg_ann, reg_ben, (1, e2e.ack_op("ben", 5)), (2, e2e.delete_op("ann"))]),
    ]
    for xs, ys in pairs:
        a, _ = run_model(xs)
        b, _ = run_model(ys)
        assert a.digest() == b.digest() and a.snapshot() == b.snapshot()


# ---- independent operations commute -----------------------------------------------------------------


USERS = [(i, f"u{i}") for i in range(6)]
USER_KEYS = [hashlib.sha256(b"user%d" % i).digest() for i in range(12)]


def user_request(key: int, op: bytes, nonce: int) -> Request:
    signed = b"REQ" + USER_KEYS[key] + nonce.to_bytes(8, "big") + op
    return Request(USER_KEYS[key], 1, nonce, op, signed, hashlib.sha512(signed).digest())


def prefix_app(sends: list[tuple[int, int]]) -> ChatApp:
    """Six accounts (own keys) and some messages between them."""
    app = ChatApp()
    for i, name in USERS:
        app.execute(user_request(i, e2e.register_op(name, BOXES[0]), 0), ExecContext(1, 0, 0))
    for n, (src, dst) in enumerate(sends):
        op = send_op(f"u{src}", f"u{dst}", 0, 0, 40 + n)
        app.execute(user_request(src, op, n + 1), ExecContext(2 + n, 0, 10 * n))
    return app


per_user_action = st.one_of(
    st.none(),
    st.tuples(st.just("ack"), st.integers(0, 30)),
    st.just(("delete", 0)),
    st.tuples(st.just("fetch"), st.integers(0, 30)),
    st.just(("list", 0)),
)


def independent_requests(plan: list[tuple[str, int] | None], newcomers: int) -> list[Request]:
    """At most one action per existing account, plus registrations of fresh names by fresh keys."""
    reqs = []
    for (i, name), action in zip(USERS, plan, strict=True):
        if action is None:
            continue
        verb, arg = action
        if verb == "ack":
            op = e2e.ack_op(name, arg)
        elif verb == "delete":
            op = e2e.delete_op(name)
        elif verb == "fetch":
            op = e2e.fetch_op(name, arg)
        else:
            op = e2e.list_op("u*")
        reqs.append(user_request(i, op, 100))
    for j in range(newcomers):
        reqs.append(user_request(6 + j, e2e.register_op(f"new{j}", BOXES[1]), 100))
    return reqs


@settings(max_examples=60, deadline=None)
@given(
    sends=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=25),
    plan=st.lists(per_user_action, min_size=6, max_size=6),
    newcomers=st.integers(0, 6),
    data=st.data(),
)
def test_independent_operations_commute(
    sends: list[tuple[int, int]], plan: list[tuple[str, int] | None], newcomers: int, data: st.DataObject
) -> None:
    reqs = independent_requests(plan, newcomers)
    shuffled = data.draw(st.permutations(reqs))
    a, b = prefix_app(sends), prefix_app(sends)
    # One batch time for both orders: an account records when it was created (the registration
    # limit counts recent ones), so registrations at different times are different states.
    for n, req in enumerate(reqs):
        a.execute(req, ExecContext(100 + n, 0, 10_000))
    for n, req in enumerate(shuffled):
        b.execute(req, ExecContext(200 + n, 1, 10_000))
    assert a.digest() == b.digest()
    assert a.snapshot() == b.snapshot()


# ---- every field of the state is covered by the digest ------------------------------------------


def test_digest_covers_every_field() -> None:
    """Change one field of a snapshot at a time: each changed state must have a different digest."""
    base_app = ChatApp(LIMITS)
    sends = [(0, send_op("ann", "ben", 1, 0, 60)), (1, send_op("ben", "cat", 0, 1, 70))]
    for n, (k, op) in enumerate(SETUP + sends):
        base_app.execute(request(k, op, n), ExecContext(seq=5 + n, index=0, timestamp_us=1000 + n))
    base = cpb.ChatSnapshot()
    base.ParseFromString(base_app.snapshot())
    assert sum(len(a.inbox) for a in base.accounts) == 2

    def variant(edit: Callable[[cpb.ChatSnapshot], object]) -> bytes:
        s = cpb.ChatSnapshot()
        s.CopyFrom(base)
        edit(s)
        app = ChatApp(LIMITS)
        app.restore(s.SerializeToString())
        return app.digest()

    ben = [a.name for a in base.accounts].index("ben")
    cat = [a.name for a in base.accounts].index("cat")

    def move_message(s: cpb.ChatSnapshot) -> None:
        s.accounts[cat].inbox.add().CopyFrom(s.accounts[ben].inbox[0])
        del s.accounts[ben].inbox[0]
        s.accounts[cat].inbox.sort(key=lambda m: m.id)

    def rename(s: cpb.ChatSnapshot) -> None:
        s.accounts[-1].name = "zzz"

    def flip_box(s: cpb.ChatSnapshot) -> None:
        s.accounts[0].box_key = BOXES[1] if s.accounts[0].box_key == BOXES[0] else BOXES[0]

    def renumber(s: cpb.ChatSnapshot) -> None:
        """Differs from the next_id edit only in the id of the last message."""
        s.accounts[cat].inbox[0].id = s.next_id
        s.next_id += 1

    edits: list[Callable[[cpb.ChatSnapshot], object]] = [
        lambda s: setattr(s, "next_id", s.next_id + 1),
        rename,
        lambda s: setattr(s.accounts[0], "signing_key", KEYS[2]),
        flip_box,
        move_message,
        renumber,
        lambda s: setattr(s.accounts[ben].inbox[0], "seq", 99),
        lambda s: setattr(s.accounts[ben].inbox[0], "timestamp_us", 99),
        lambda s: setattr(s.accounts[ben].inbox[0], "signed", s.accounts[ben].inbox[0].signed + b"x"),
        lambda s: setattr(s.accounts[ben].inbox[0], "signature", bytes(64)),
        lambda s: s.accounts[ben].inbox.pop(),
        lambda s: s.accounts.pop(),
    ]
    digests = [base_app.digest()] + [variant(e) for e in edits]
    assert len(set(digests)) == len(digests)


# ---- the hand-joined snapshot is the protobuf serialisation, byte for byte -------------------------

U64 = 2**64 - 1
big = st.one_of(st.just(0), st.integers(1, 127), st.integers(128, 2**21), st.integers(2**21, U64))
"""uint64 values across varint sizes: zero (left out), one byte, a few, up to ten."""
SIGNED_SIZES = [0, 1, 40, 127, 128, 300, 16_383, 16_384]  # length prefixes of one, two and three bytes


def reference_snapshot(app: ChatApp) -> bytes:
    """What ChatApp.snapshot() returned before it joined cached bytes: the protobuf, built field by field
    from the app's state and serialised deterministically. Replicas running either must agree."""
    snap = cpb.ChatSnapshot(version=1, next_id=app._next_id)
    for name in app._names:
        acct = app._accounts[name]
        rec = snap.accounts.add(
            name=name, signing_key=acct.signing_key, box_key=acct.box_key, created_us=acct.created_us
        )
        for m in acct.inbox:
            rec.inbox.add(
                id=m.id, seq=m.seq, timestamp_us=m.timestamp_us, signed=m.signed, signature=m.signature
            )
    return snap.SerializeToString(deterministic=True)


@st.composite
def chat_snapshots(draw: st.DrawFn) -> cpb.ChatSnapshot:
    """A valid ChatSnapshot: natural accounts (so later operations find them) and random ones, empty and
    non-empty inboxes, ids, sequence numbers and times of every varint size, signed bodies of every
    length-prefix size."""
    natural = draw(st.lists(st.sampled_from(sorted(n for n in NATURAL if n.islower())), unique=True))
    other = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_-]{0,31}", fullmatch=True), unique=True, max_size=6))
    names = sorted(set(natural) | set(other))
    count = draw(st.integers(0, 3 * len(names))) if names else 0
    ids = sorted(draw(st.lists(st.integers(1, U64 - 1001), min_size=count, max_size=count, unique=True)))
    next_id = draw(st.integers(max(ids, default=0) + 1, U64 - 1000))
    snap = cpb.ChatSnapshot(version=1, next_id=next_id)
    owners = sorted(draw(st.lists(st.sampled_from(names), min_size=count, max_size=count))) if names else []
    inboxes: dict[str, list[int]] = {}
    for name, msg_id in zip(owners, draw(st.permutations(ids)), strict=True):
        inboxes.setdefault(name, []).append(msg_id)
    for name in names:
        key, box = NATURAL.get(name, (None, None))
        rec = snap.accounts.add(
            name=name,
            signing_key=KEYS[key] if key is not None else hashlib.sha256(name.encode()).digest(),
            box_key=BOXES[box] if box is not None else hashlib.sha256(b"box" + name.encode()).digest(),
            created_us=draw(big),
        )
        for msg_id in sorted(inboxes.get(name, []))[: LIMITS.max_inbox]:
            signed = draw(st.sampled_from(SIGNED_SIZES)) * b"s"
            rec.inbox.add(
                id=msg_id,
                seq=draw(big),
                timestamp_us=draw(big),
                signed=signed,
                signature=draw(st.binary(min_size=64, max_size=64)),
            )
    return snap


def test_empty_state_snapshot_is_the_protobuf() -> None:
    assert ChatApp().snapshot() == cpb.ChatSnapshot(version=1, next_id=1).SerializeToString(
        deterministic=True
    )
    assert ChatApp().snapshot() == reference_snapshot(ChatApp())


@settings(max_examples=150, deadline=None)
@given(chat_snapshots(), st.lists(ops, max_size=40), big, st.integers(0, 2**40))
def test_snapshot_is_the_protobuf_serialisation(
    snap: cpb.ChatSnapshot, actions: list[tuple[int, bytes]], seq0: int, ts0: int
) -> None:
    """snapshot() (joined from cached pieces) equals the deterministic protobuf serialisation of the same
    state: restored from random snapshots, then changed by registrations, sends, acks and deletes
    executed at sequence numbers and times of every varint size. restore(snapshot()) round-trips."""
    data = snap.SerializeToString(deterministic=True)
    app = ChatApp(LIMITS)
    app.restore(data)
    assert app.snapshot() == data
    app.set_page_count(PAGES)
    pages = PageMirror(app)
    for i, req in enumerate(requests_of(actions)):
        ctx = ExecContext(seq=min(seq0 + i, U64), index=0, timestamp_us=min(ts0 + 1000 * i, U64))
        app.execute(req, ctx)
        pages.check()
        assert app.snapshot() == reference_snapshot(app)
    check_restore(app)
    assert_empty_inboxes_untracked(app)


def assert_empty_inboxes_untracked(app: ChatApp) -> None:
    """Empty inboxes (most accounts' at a million accounts) cost no object a full collection walks."""
    for acct in app._accounts.values():
        assert acct.inbox or not gc.is_tracked(acct.inbox)
    fresh = ChatApp(LIMITS)
    fresh.restore(app.snapshot())
    for acct in fresh._accounts.values():
        assert acct.inbox or not gc.is_tracked(acct.inbox)


def test_account_record_of_non_ascii_and_empty_fields() -> None:
    """The record encoder counts UTF-8 bytes and leaves out proto3 defaults, though the app itself only
    stores ASCII names and 32-byte keys (restore refuses anything else)."""
    from bft.app.chat import _SIG_HEAD, _account_record, _delivered_head, _record_start
    from bft.wire import len_field_head

    for name, key, box, created in [
        ("zoë-名前", b"k" * 32, b"b" * 32, 5),
        ("a", b"", b"", 0),
        ("x" * 200, b"k", b"", U64),
    ]:
        record, split = _account_record(name, key, box, created)
        rec = cpb.ChatAccountRecord(name=name, signing_key=key, box_key=box, created_us=created)
        assert record == cpb.ChatSnapshot(accounts=[rec]).SerializeToString(deterministic=True)
        entry = cpb.ChatDelivered(id=1, signature=b"s" * 64)
        rec.inbox.append(entry)
        want = cpb.ChatSnapshot(accounts=[rec]).SerializeToString(deterministic=True)
        content = record[_record_start(record) : split] + _delivered_head(1, 0, 0, b"", entry.signature)
        content += _SIG_HEAD + entry.signature + record[split:]
        assert len_field_head(3, len(content)) + content == want


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=40), st.from_regex(r"[a-zA-Z0-9_\-\n]{0,34}", fullmatch=True)))
@example("a" * 32)
@example("a" * 33)
@example("a\n")
@example("\na")
@example("zoë")
@example("")
@example("-a")
def test_batch_name_check_is_normalize_name(name: str) -> None:
    """restore checks all names with one compiled pattern: it accepts exactly the canonical names."""
    from bft.app.names import all_canonical, normalize_name

    assert all_canonical([name]) == (normalize_name(name) == name)
    assert all_canonical(["ann", name, "zed"]) == (normalize_name(name) == name)


def test_restore_drops_unknown_fields_from_the_cached_records() -> None:
    """Unknown fields in a snapshot were always ignored; the records cached from it must not keep them."""
    app = ChatApp(LIMITS)
    for i, req in enumerate(requests_of([*SETUP, (0, send_op("ann", "ben", 1, 0, 40))])):
        app.execute(req, ExecContext(seq=i + 1, index=0, timestamp_us=1000 * i))
    unknown = b"\xf8\x01\x07"  # field 31, varint 7
    padded = cpb.ChatSnapshot()
    padded.ParseFromString(app.snapshot() + unknown)
    for rec in padded.accounts:
        rec.ParseFromString(rec.SerializeToString() + unknown)
        for d in rec.inbox:
            d.ParseFromString(d.SerializeToString() + unknown)
    data = padded.SerializeToString()
    assert data.count(unknown) == 1 + app.account_count + app.stored_messages
    other = ChatApp(LIMITS)
    other.restore(data)
    assert other.snapshot() == app.snapshot() == reference_snapshot(other)
    assert other.digest() == app.digest()
