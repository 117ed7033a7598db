"""The chat application: each operation, each error, delete semantics, limits, snapshot/restore."""

from __future__ import annotations

import pytest
from chat_helpers import CLUSTER, Code, Driver, User, error_code
from hypothesis import given, settings
from hypothesis import strategies as st

from bft.app.base import AppFactory, Application, ExecContext, Request
from bft.app.chat import ChatApp, ChatLimits, NewMessage
from bft.app.names import literal_prefix, matches, normalize_name, normalize_pattern
from bft.pb.bftchat.v1 import chat_pb2 as cpb
from client import e2e


def fresh(limits: ChatLimits | None = None) -> tuple[Driver, User, User]:
    d = Driver(ChatApp(limits))
    alice, bob = User("alice"), User("bob")
    for u in (alice, bob):
        assert d.run(u.request(e2e.register_op(u.name, u.box.public))).registered.name == u.name
    return d, alice, bob


def assert_rejected(d: Driver, req: Request, code: int) -> None:
    """The op fails with ``code`` and changes nothing."""
    before = (d.app.digest(), d.app.snapshot())
    result, out = d.exec(req)
    assert error_code(result) == code, result
    assert out.events == ()
    assert (d.app.digest(), d.app.snapshot()) == before


# ---- names --------------------------------------------------------------------------------------


def test_name_rules() -> None:
    assert normalize_name("Alice_99-x") == "alice_99-x"
    assert normalize_name("a" * 32) == "a" * 32
    for bad in ("", "a" * 33, "1abc", "_abc", "-x", "al ice", "álice", "a.b", "a*", "ALİCE"):
        assert normalize_name(bad) is None, bad
    assert normalize_pattern("") == "*"
    assert normalize_pattern("Al*") == "al*"
    assert normalize_pattern("a[b]") is None
    assert literal_prefix("al?c*") == "al"


@pytest.mark.parametrize(
    ("pattern", "name", "ok"),
    [
        ("al*", "alice", True),
        ("al*", "al", True),
        ("al*", "bob", False),
        ("*", "x", True),
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("*b*", "abc", True),
        ("*b", "abc", False),
        ("a*c*e", "abcde", True),
        ("a*c*e", "abcdf", False),
        ("**", "z", True),
        ("alice", "alice", True),
    ],
)
def test_wildcards(pattern: str, name: str, ok: bool) -> None:
    assert matches(pattern, name) is ok


# ---- register -----------------------------------------------------------------------------------


def test_register_and_errors() -> None:
    d, alice, _bob = fresh()
    assert d.app.account_count == 2
    eve = User("eve")
    assert_rejected(d, eve.request(e2e.register_op("ALICE", eve.box.public)), Code.NAME_TAKEN)
    assert_rejected(d, eve.request(e2e.register_op("9lives", eve.box.public)), Code.INVALID_NAME)
    assert_rejected(d, eve.request(e2e.register_op("eve", b"short")), Code.INVALID_KEY)
    # A second account for the same key is fine, up to the limit.
    for i in range(3):
        result = d.run(alice.request(e2e.register_op(f"Alice{i}", alice.box.public)))
        assert result.registered.name == f"alice{i}"
    assert_rejected(d, alice.request(e2e.register_op("alice9", alice.box.public)), Code.TOO_MANY_ACCOUNTS)


# ---- list ---------------------------------------------------------------------------------------


def test_list_sorted_paginated_with_keys() -> None:
    d = Driver()
    users = [User(n) for n in ("carol", "al", "alice", "bob", "alfred", "albert", "zed")]
    for u in users:
        d.run(u.request(e2e.register_op(u.name, u.box.public)))
    asker = users[0]
    res = d.query(asker.request(e2e.list_op("AL*"), read_only=True))
    assert [a.name for a in res.accounts.accounts] == ["al", "albert", "alfred", "alice"]
    assert res.accounts.next_after == ""
    by_name = {u.name: u for u in users}
    for a in res.accounts.accounts:
        assert a.signing_key == by_name[a.name].key and a.box_key == by_name[a.name].box.public
    # Pages of two, following the cursor; execute() answers the same as query().
    seen: list[str] = []
    after = ""
    while True:
        op = e2e.list_op("*", limit=2, after=after)
        page = d.query(asker.request(op)).accounts
        assert d.run(asker.request(op)).accounts == page
        seen += [a.name for a in page.accounts]
        after = page.next_after
        if not after:
            break
    assert seen == sorted(u.name for u in users)
    assert [a.name for a in d.query(asker.request(e2e.list_op("a?b*"))).accounts.accounts] == ["albert"]
    assert error_code(d.query(asker.request(e2e.list_op("a[b]")))) == Code.INVALID_PATTERN
    assert error_code(d.query(asker.request(e2e.list_op("*", after="1x")))) == Code.INVALID_NAME


def test_list_scan_budget_gives_cursor() -> None:
    d = Driver(ChatApp(ChatLimits(list_scan_max=3)))
    users = [User(f"user{i:02d}") for i in range(10)]
    for u in users:
        d.run(u.request(e2e.register_op(u.name, u.box.public)))
    found: list[str] = []
    after, calls = "", 0
    while True:
        page = d.query(users[0].request(e2e.list_op("*9", after=after))).accounts
        found += [a.name for a in page.accounts]
        calls += 1
        after = page.next_after
        if not after:
            break
    assert found == ["user09"]
    assert calls == 4


# ---- send / fetch / ack ---------------------------------------------------------------------------


def test_send_fetch_decrypt_ack() -> None:
    d, alice, bob = fresh()
    texts = [b"hello bob", b"second", b"third"]
    sent_ids = []
    for text in texts:
        result, out = d.exec(alice.send(bob, text))
        sent = result.sent
        assert sent.seq == d.seq and sent.timestamp_us == 1_000_000 * d.seq
        assert out.events == (NewMessage("bob", bob.key, sent.id, sent.seq),)
        sent_ids.append(sent.id)
    assert sent_ids == sorted(sent_ids) and len(set(sent_ids)) == 3
    assert d.app.stored_messages == 3

    fetched = d.query(bob.request(e2e.fetch_op("bob"), read_only=True)).messages
    assert fetched.pending == 3 and not fetched.more
    assert [m.id for m in fetched.messages] == sent_ids
    assert d.run(bob.request(e2e.fetch_op("bob"))).messages == fetched
    for m, text in zip(fetched.messages, texts, strict=True):
        got = e2e.open_delivered(m, CLUSTER, "bob", bob.box)
        assert (got.plaintext, got.sender, got.sender_key, got.recipient) == (text, "alice", alice.key, "bob")

    page = d.query(bob.request(e2e.fetch_op("Bob", after_id=sent_ids[0], limit=1))).messages
    assert [m.id for m in page.messages] == [sent_ids[1]] and page.more

    acked = d.run(bob.request(e2e.ack_op("bob", sent_ids[1]))).acked
    assert (acked.removed, acked.remaining) == (2, 1)
    again = d.run(bob.request(e2e.ack_op("bob", sent_ids[1]))).acked
    assert (again.removed, again.remaining) == (0, 1)
    rest = d.query(bob.request(e2e.fetch_op("bob"))).messages
    assert [m.id for m in rest.messages] == [sent_ids[2]]
    d.run(bob.request(e2e.ack_op("bob", 10**18)))
    assert d.app.stored_messages == 0


def test_only_owner_reads_and_acks() -> None:
    d, alice, bob = fresh()
    d.run(alice.send(bob, b"secret"))
    assert error_code(d.query(alice.request(e2e.fetch_op("bob")))) == Code.NOT_OWNER
    assert error_code(d.query(alice.request(e2e.fetch_op("nobody")))) == Code.NO_SUCH_ACCOUNT
    assert_rejected(d, alice.request(e2e.ack_op("bob", 100)), Code.NOT_OWNER)
    assert_rejected(d, alice.request(e2e.delete_op("bob")), Code.NOT_OWNER)
    assert_rejected(d, bob.send(alice, b"forged", as_name="alice"), Code.NOT_OWNER)


def test_send_errors_change_nothing() -> None:
    d, alice, bob = fresh(ChatLimits(max_inbox=4))  # a lone sender's share is half: 2
    ghost = User("ghost")
    assert_rejected(d, alice.send(ghost, b"hi"), Code.NO_SUCH_RECIPIENT)
    assert_rejected(d, ghost.send(bob, b"hi"), Code.NO_SUCH_ACCOUNT)

    def send_op(**overrides: object) -> bytes:
        fields: dict[str, object] = {
            "sender": "alice",
            "recipient": "bob",
            "recipient_box_key": bob.box.public,
            "sender_box_key": alice.box.public,
            "ciphertext": b"c" * 100,
        }
        fields.update(overrides)
        return cpb.ChatOp(send=cpb.ChatSend(**fields)).SerializeToString()  # type: ignore[arg-type]

    wrong_key = send_op(recipient_box_key=alice.box.public)
    assert_rejected(d, alice.request(wrong_key), Code.RECIPIENT_KEY_MISMATCH)
    assert_rejected(d, alice.request(send_op(sender_box_key=bob.box.public)), Code.SENDER_KEY_MISMATCH)
    assert_rejected(d, alice.request(send_op(sender_box_key=b"x")), Code.INVALID_KEY)
    assert_rejected(d, alice.request(send_op(recipient="b b")), Code.INVALID_NAME)
    assert_rejected(d, alice.request(send_op(ciphertext=b"c" * (64 * 1024 + 1))), Code.BODY_TOO_LARGE)
    assert_rejected(d, alice.request(send_op(ciphertext=b"c" * 39)), Code.BODY_TOO_SMALL)
    assert d.run(alice.request(send_op(ciphertext=b"c" * 64 * 1024))).sent.id == 1
    assert d.run(alice.request(send_op())).sent.id == 2
    assert_rejected(d, alice.request(send_op()), Code.QUOTA_EXCEEDED)
    assert_rejected(d, alice.request(send_op(ciphertext=b"c" * 70_000)), Code.OP_TOO_LARGE)
    d.run(bob.request(e2e.ack_op("bob", 1)))
    assert d.run(alice.request(send_op())).sent.id == 3


def test_fetch_byte_budget() -> None:
    d, alice, bob = fresh(ChatLimits(fetch_bytes_max=3000))
    for i in range(5):
        d.run(alice.send(bob, bytes(1000 + i)))
    page = d.query(bob.request(e2e.fetch_op("bob"))).messages
    assert len(page.messages) == 2 and page.more and page.pending == 5
    one = ChatApp(ChatLimits(fetch_bytes_max=10))
    one.restore(d.app.snapshot())
    assert len(e2e.parse_result(one.query(bob.request(e2e.fetch_op("bob")))).messages.messages) == 1


def test_messages_in_commit_order_across_senders() -> None:
    d, alice, bob = fresh()
    carol = User("carol")
    d.run(carol.request(e2e.register_op("carol", carol.box.public)))
    order = [(alice, b"1"), (carol, b"2"), (alice, b"3"), (carol, b"4")]
    for sender, text in order:
        d.run(sender.send(bob, text))
    msgs = d.query(bob.request(e2e.fetch_op("bob"))).messages.messages
    got = [e2e.open_delivered(m, CLUSTER, "bob", bob.box) for m in msgs]
    assert [(g.sender, g.plaintext) for g in got] == [(s.name, t) for s, t in order]
    assert [m.seq for m in msgs] == sorted(m.seq for m in msgs)


# ---- delete ---------------------------------------------------------------------------------------


def test_delete_semantics() -> None:
    d, alice, bob = fresh()
    d.run(alice.send(bob, b"one"))
    d.run(alice.send(bob, b"two"))
    d.run(bob.send(alice, b"from bob"))
    deleted = d.run(bob.request(e2e.delete_op("BOB"))).deleted
    assert (deleted.name, deleted.dropped) == ("bob", 2)
    assert d.app.stored_messages == 1 and d.app.account_count == 1
    # Sends to the name now fail; bob's earlier message to alice stays.
    assert_rejected(d, alice.send(bob, b"three"), Code.NO_SUCH_RECIPIENT)
    inbox = d.query(alice.request(e2e.fetch_op("alice"))).messages.messages
    assert e2e.open_delivered(inbox[0], CLUSTER, "alice", alice.box).plaintext == b"from bob"
    assert_rejected(d, bob.request(e2e.delete_op("bob")), Code.NO_SUCH_ACCOUNT)
    # Anyone may take the name again; messages encrypted to the old key are refused.
    mallory = User("bob", label="mallory")
    assert d.run(mallory.request(e2e.register_op("bob", mallory.box.public))).registered.name == "bob"
    assert_rejected(d, alice.send(bob, b"for the old bob"), Code.RECIPIENT_KEY_MISMATCH)
    assert d.query(mallory.request(e2e.fetch_op("bob"))).messages.pending == 0
    assert d.run(alice.send(mallory, b"hi new bob")).WhichOneof("result") == "sent"


def test_delete_restores_earlier_digest() -> None:
    d, alice, _bob = fresh()
    before = (d.app.digest(), d.app.snapshot())
    carol = User("carol")
    d.run(carol.request(e2e.register_op("carol", carol.box.public)))
    assert d.app.digest() != before[0]
    d.run(carol.request(e2e.delete_op("carol")))
    assert (d.app.digest(), d.app.snapshot()) == before
    # The per-key count is released too: the key can register the maximum again.
    for i in range(3):
        d.run(alice.request(e2e.register_op(f"a{i}", alice.box.public)))
    assert d.app.account_count == 5


# ---- malformed input ------------------------------------------------------------------------------


def test_malformed_and_read_only() -> None:
    d, alice, _bob = fresh()
    assert_rejected(d, alice.request(b""), Code.MALFORMED)
    assert_rejected(d, alice.request(b"\xff\xff\xff"), Code.MALFORMED)
    assert_rejected(d, alice.request(b"\x0a\x02\x0a\x80"), Code.MALFORMED)  # truncated/invalid UTF-8
    assert_rejected(d, alice.request(b"x" * 80_000), Code.OP_TOO_LARGE)
    before = d.app.digest()
    assert error_code(d.query(alice.request(e2e.register_op("zz", alice.box.public)))) == Code.READ_ONLY
    assert error_code(d.query(alice.request(e2e.delete_op("alice")))) == Code.READ_ONLY
    assert d.app.digest() == before


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_raises(op: bytes) -> None:
    app = ChatApp()
    req = Request(client_key=b"k" * 32, session=1, timestamp=1, op=op, signed=b"s", signature=b"\0" * 64)
    before = app.digest()
    out = app.execute(req, ExecContext(1, 0, 0))
    result = e2e.parse_result(out.result)
    e2e.parse_result(app.query(req))
    if result.WhichOneof("result") == "error":
        assert app.digest() == before


def test_errors_are_deterministic_bytes() -> None:
    results = []
    for _ in range(2):
        d, alice, _bob = fresh()
        results.append(d.app.execute(alice.request(b"\xff"), ExecContext(9, 0, 9)).result)
    assert results[0] == results[1]
    parsed = e2e.parse_result(results[0])
    assert parsed.error.code == Code.MALFORMED and parsed.error.message == "operation does not parse"


# ---- snapshot / restore ---------------------------------------------------------------------------


def test_snapshot_roundtrip() -> None:
    d, alice, bob = fresh()
    for i in range(5):
        d.run(alice.send(bob, b"m%d" % i))
    d.run(bob.send(alice, b"back"))
    d.run(bob.request(e2e.ack_op("bob", 2)))
    snap = d.app.snapshot()
    other = ChatApp()
    other.restore(snap)
    assert other.digest() == d.app.digest()
    assert other.snapshot() == snap
    assert other.stored_messages == d.app.stored_messages == 4
    # The restored app continues identically.
    d2 = Driver(other)
    d2.seq = d.seq
    req = alice.send(bob, b"after")
    assert d.run(req) == d2.run(req)
    assert other.digest() == d.app.digest()


def _snap(app: ChatApp) -> cpb.ChatSnapshot:
    s = cpb.ChatSnapshot()
    s.ParseFromString(app.snapshot())
    return s


def test_restore_rejects_bad_snapshots_and_keeps_state() -> None:
    d, alice, bob = fresh()
    d.run(alice.send(bob, b"x"))
    d.run(alice.send(bob, b"y"))
    good = _snap(d.app)
    target = ChatApp()
    target.restore(good.SerializeToString())
    before = (target.digest(), target.snapshot())

    def mutated(fn: object) -> bytes:
        s = cpb.ChatSnapshot()
        s.CopyFrom(good)
        fn(s)  # type: ignore[operator]
        return s.SerializeToString()

    def dup_id(s: cpb.ChatSnapshot) -> None:
        s.accounts[1].inbox[1].id = s.accounts[1].inbox[0].id

    bad = [
        b"\xff\xff",
        mutated(lambda s: setattr(s, "version", 2)),
        mutated(lambda s: setattr(s, "next_id", 2)),
        mutated(lambda s: setattr(s, "next_id", 0)),
        mutated(lambda s: s.accounts.reverse()),
        mutated(lambda s: setattr(s.accounts[0], "name", "Alice")),
        mutated(lambda s: setattr(s.accounts[0], "box_key", b"k")),
        mutated(lambda s: setattr(s.accounts[1].inbox[0], "signature", b"")),
        mutated(lambda s: setattr(s.accounts[1].inbox[0], "id", 0)),
        mutated(dup_id),
        mutated(lambda s: s.accounts[0].inbox.add().CopyFrom(s.accounts[1].inbox[0])),
    ]
    for data in bad:
        with pytest.raises(ValueError):
            target.restore(data)
        assert (target.digest(), target.snapshot()) == before
    small = ChatApp(ChatLimits(max_inbox=1))
    with pytest.raises(ValueError):
        small.restore(good.SerializeToString())
    assert small.snapshot() == ChatApp().snapshot()


# ---- quotas: keys are free, so per-key limits only hold under global ones ---------------------------


def test_one_sender_cannot_fill_an_inbox() -> None:
    """Max-min share: k senders get at most max_inbox/(k+1) each, so a newcomer always finds room."""
    d, alice, bob = fresh(ChatLimits(max_inbox=12))
    carol, dave = User("carol"), User("dave")
    for u in (carol, dave):
        d.run(u.request(e2e.register_op(u.name, u.box.public)))
    sent = 0
    while d.run(alice.send(bob, b"spam")).WhichOneof("result") == "sent":
        sent += 1
    assert sent == 6  # alone: half of the inbox
    assert_rejected(d, alice.send(bob, b"more"), Code.QUOTA_EXCEEDED)
    for _ in range(4):  # carol's share with alice present: 12 // 3
        assert d.run(carol.send(bob, b"hello")).WhichOneof("result") == "sent"
    assert_rejected(d, carol.send(bob, b"one more"), Code.QUOTA_EXCEEDED)
    for _ in range(2):  # dave: 12 // 4 = 3, but only two slots are left in the inbox
        assert d.run(dave.send(bob, b"hi")).WhichOneof("result") == "sent"
    assert_rejected(d, dave.send(bob, b"full"), Code.INBOX_FULL)
    d.run(bob.request(e2e.ack_op("bob", 10**9)))  # delivered: every share is free again
    assert d.run(alice.send(bob, b"again")).WhichOneof("result") == "sent"


def test_per_key_and_global_byte_budgets() -> None:
    body = b"x" * 1000
    probe, alice, _ = fresh()
    cat = User("cat")
    probe.run(cat.request(e2e.register_op("cat", cat.box.public)))
    empty = probe.app.state_bytes
    probe.run(alice.send(cat, body))
    c = probe.app.state_bytes - empty  # accounted bytes of one such message (signed bytes + 192)
    limits = ChatLimits(max_key_bytes=3 * c + c // 2, max_state_bytes=4 * 256 + 5 * c + 100)
    d, alice, bob = fresh(limits)
    cat, dan = User("cat"), User("dan")
    for u in (cat, dan):
        d.run(u.request(e2e.register_op(u.name, u.box.public)))
    for _ in range(3):
        assert d.run(alice.send(cat, body)).WhichOneof("result") == "sent"
    assert_rejected(d, alice.send(dan, body), Code.QUOTA_EXCEEDED)  # alice's bytes, whatever the inbox
    assert d.run(bob.send(dan, body)).WhichOneof("result") == "sent"
    assert d.run(bob.send(cat, body)).WhichOneof("result") == "sent"
    assert_rejected(d, dan.send(cat, body), Code.STATE_FULL)
    assert_rejected(d, User("erin").request(e2e.register_op("erin", b"k" * 32)), Code.STATE_FULL)
    d.run(cat.request(e2e.ack_op("cat", 10**9)))  # three of alice's and one of bob's delivered
    for _ in range(3):
        assert d.run(alice.send(dan, body)).WhichOneof("result") == "sent"
    # The derived counters are rebuilt exactly from a snapshot: a restored replica refuses the same.
    twin = Driver(ChatApp(limits))
    twin.app.restore(d.app.snapshot())
    assert twin.app.state_bytes == d.app.state_bytes
    last = alice.send(dan, body)
    assert error_code(d.run(last)) == Code.QUOTA_EXCEEDED
    assert error_code(twin.run(last)) == Code.QUOTA_EXCEEDED


def test_registrations_limited_per_window_of_batch_time() -> None:
    app = ChatApp(ChatLimits(register_max=3, register_window_s=10))
    users = [User(f"u{i}") for i in range(6)]

    def register(u: User, t_s: float) -> cpb.ChatResult:
        out = app.execute(u.request(e2e.register_op(u.name, u.box.public)), ExecContext(1, 0, int(t_s * 1e6)))
        return e2e.parse_result(out.result)

    for i in range(3):
        assert register(users[i], 100 + i).WhichOneof("result") == "registered"
    before = (app.digest(), app.snapshot())
    assert error_code(register(users[3], 105)) == Code.RATE_LIMITED
    assert (app.digest(), app.snapshot()) == before
    # Deleting a recent account frees its place in the window (the limit is on state, not history).
    app.execute(users[2].request(e2e.delete_op("u2")), ExecContext(2, 0, 106_000_000))
    assert register(users[3], 106).WhichOneof("result") == "registered"
    assert error_code(register(users[4], 109.9)) == Code.RATE_LIMITED
    assert register(users[4], 110.5).WhichOneof("result") == "registered"  # u0 left the window
    # A replica restored from a snapshot refuses exactly the same.
    twin = ChatApp(ChatLimits(register_max=3, register_window_s=10))
    twin.restore(app.snapshot())
    late = users[5].request(e2e.register_op("u5", users[5].box.public))
    out = twin.execute(late, ExecContext(3, 0, 110_900_000))
    assert error_code(e2e.parse_result(out.result)) == Code.RATE_LIMITED
    assert error_code(register(users[5], 110.9)) == Code.RATE_LIMITED


def test_limits_validated() -> None:
    with pytest.raises(ValueError):
        ChatLimits(max_state_bytes=2**31)
    with pytest.raises(ValueError):
        ChatLimits(register_max=0)


def test_memory_bounded_by_undelivered() -> None:
    d, alice, bob = fresh()
    for i in range(50):
        d.run(alice.send(bob, b"%d" % i))
        if i % 10 == 9:
            d.run(bob.request(e2e.ack_op("bob", 10**9)))
    assert d.app.stored_messages == 0
    empty = ChatApp()
    empty.restore(d.app.snapshot())
    assert len(d.app.snapshot()) < 300  # two accounts and a counter, not fifty messages


def test_conforms_to_application_protocol() -> None:
    app: Application = ChatApp()  # checked by mypy; the factory shape the core uses
    factory: AppFactory = ChatApp
    assert factory().digest() == app.digest()
