"""The test key-value application: results, digest/snapshot determinism, restore safety."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bft.app.base import AppFactory, Application, ExecContext, Request
from bft.app.kv import KVApp


def req(op: bytes) -> Request:
    return Request(client_key=b"k" * 32, session=1, timestamp=1, op=op, signed=b"", signature=b"")


CTX = ExecContext(seq=1, index=0, timestamp_us=0)


def run(app: KVApp, op: bytes) -> bytes:
    return app.execute(req(op), CTX).result


def test_set_get_add() -> None:
    app = KVApp()
    assert run(app, b"get a") == b"NOTFOUND"
    assert run(app, b"set a hello world") == b"OK"
    assert run(app, b"get a") == b"hello world"
    assert app.query(req(b"get a")) == b"hello world"
    assert run(app, b"add n 5") == b"5"
    assert run(app, b"add n -7") == b"-2"
    assert run(app, b"add a 1") == b"ERR not an integer"
    assert run(app, b"add n x") == b"ERR not an integer"
    assert run(app, b"frob") == b"ERR bad op"
    assert run(app, b"set") == b"ERR bad op"
    assert app.query(req(b"set a b")) == b"ERR read-only"
    assert app.query(req(b"get a")) == b"hello world"


def test_digest_tracks_content_not_history() -> None:
    a, b = KVApp(), KVApp()
    assert a.digest() == b.digest()
    run(a, b"set x 1")
    run(a, b"set y 2")
    run(b, b"set y 9")
    run(b, b"set y 2")
    assert a.digest() != b.digest()
    run(b, b"add x 1")
    assert a.digest() == b.digest()
    assert a.snapshot() == b.snapshot()


def test_restore_roundtrip_and_rejects_garbage() -> None:
    a = KVApp()
    run(a, b"set x 1")
    run(a, b"set y two words")
    snap = a.snapshot()
    b = KVApp()
    b.restore(snap)
    assert b.digest() == a.digest()
    assert b.snapshot() == snap
    before = b.digest()
    for bad in (b"", b"junk", snap[:-1], snap + b"x"):
        with pytest.raises(ValueError):
            b.restore(bad)
        assert b.digest() == before


keys = st.sampled_from([b"a", b"b", b"c"])
ops = st.one_of(
    st.tuples(st.just(b"set"), keys, st.binary(max_size=4)),
    st.tuples(st.just(b"add"), keys, st.integers(-5, 5).map(lambda i: b"%d" % i)),
).map(lambda t: b" ".join(t))


@settings(max_examples=100, deadline=None)
@given(st.lists(ops, max_size=30))
def test_snapshot_matches_digest(seq: list[bytes]) -> None:
    a = KVApp()
    for op in seq:
        run(a, op)
    b = KVApp()
    b.restore(a.snapshot())
    assert b.digest() == a.digest()
    assert b.snapshot() == a.snapshot()


def test_conforms_to_application_protocol() -> None:
    app: Application = KVApp()  # checked by mypy; the factory shape the core uses
    factory: AppFactory = KVApp
    assert factory().digest() == app.digest()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([b"a", b"b", b"cc", b"d d", b"key9", b"zz"]), st.binary(max_size=20)))
)
def test_pages_follow_every_write_and_restore(writes: list[tuple[bytes, bytes]]) -> None:
    """Pages updated from the reported changes only stay equal to the app's pages after every write,
    and the pages restore to the same state (a page holding another page's key is refused)."""
    app = KVApp()
    app.set_page_count(4)
    mirror = [b""] * 4
    for key, value in writes:
        run(app, b"set " + key.replace(b" ", b"_") + b" " + value)
        for i in app.take_dirty_pages():
            mirror[i] = app.page(i)
        assert mirror == [app.page(i) for i in range(4)]
    again = KVApp()
    again.set_page_count(4)
    again.restore_pages(mirror)
    assert again.digest() == app.digest() and again.snapshot() == app.snapshot()
    assert not again.take_dirty_pages()
    full = [p for p in mirror if p]
    if full:
        with pytest.raises(ValueError, match="another page"):
            again.restore_pages([full[0]] * 4)
