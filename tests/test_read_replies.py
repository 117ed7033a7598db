"""One-round read replies are signed per core step, not per read: every read answered in one step
(a runtime burst, or the parked reads served when their seq executes) shares one signed ReplyRoot,
each reply carrying its Merkle path; the client checks each one as it checks an ordered reply."""

from __future__ import annotations

import pytest
from core_helpers import deliver

from bft.app.kv import KVApp
from bft.core.config import ClusterInfo, Params
from bft.core.events import Output, Send, SetTimer, ToClient
from bft.core.replica import Replica
from bft.crypto import TAG_LEN, HashSigner, HashVerifier, Kind, cluster_id_from, tag
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.replies import CheckedReply, ReplyCollector, check_reply
from bft.wire import WireError, make_request

CID = cluster_id_from(b"read replies")


class CountingSigner(HashSigner):
    """Counts the signatures a replica makes, and the ReplyRoots of one-round reads (seq 0) among them."""

    signed = 0
    read_roots = 0

    def sign(self, data: bytes) -> bytes:
        self.signed += 1
        if data.startswith(tag(Kind.REPLY, CID)) and pb.ReplyRoot.FromString(data[TAG_LEN:]).seq == 0:
            self.read_roots += 1
        return super().sign(data)


def cluster(n: int = 4) -> tuple[ClusterInfo, list[CountingSigner], HashVerifier, list[Replica]]:
    hv = HashVerifier()
    signers = [CountingSigner(b"r%d" % i, hv) for i in range(n)]
    info = ClusterInfo(
        tuple(s.public_key for s in signers), CID, Params(checkpoint_interval=2, watermark_window=8)
    )
    reps = [Replica(info, i, signers[i], hv, KVApp) for i in range(n)]
    for r in reps:
        r.start(0.0)
        r.take_outputs()
    return info, signers, hv, reps


def write(reps: list[Replica], hv: HashVerifier, op: bytes) -> None:
    """Order one write through the primary on a lossless network."""
    writer = HashSigner(b"writer", hv)
    write.ts += 1  # type: ignore[attr-defined]
    reps[0].on_request(make_request(writer, CID, 1, write.ts, op), 0.5)  # type: ignore[attr-defined]
    deliver(reps, {0: list[object](reps[0].take_outputs())}, 0.5)


write.ts = 0  # type: ignore[attr-defined]


def readers(hv: HashVerifier, count: int) -> list[HashSigner]:
    return [HashSigner(b"reader%d" % i, hv) for i in range(count)]


def replies(outs: list[Output]) -> list[ToClient]:
    return [o for o in outs if isinstance(o, ToClient)]


def check(info: ClusterInfo, hv: HashVerifier, out: ToClient) -> CheckedReply:
    return check_reply(out.data, info, hv, out.client_key, out.session, out.timestamp)


def test_reads_answered_in_one_step_carry_one_signature_and_each_verifies_with_its_path() -> None:
    info, signers, hv, reps = cluster()
    write(reps, hv, b"set a 1")
    backup = reps[1]
    who = readers(hv, 6)
    # Seven reads in one step: six readers, one of them twice (another timestamp), two keys.
    reads = [(s, 1, b"get a" if i % 2 else b"get b") for i, s in enumerate(who)] + [(who[0], 2, b"get a")]
    before = signers[1].signed
    for s, ts, op in reads:
        assert backup.on_request(make_request(s, CID, 1, ts, op, read_only=True), 0.6) is None
    assert signers[1].signed == before  # nothing signed until the step ends
    got = replies(backup.take_outputs())
    assert signers[1].signed == before + 1  # one signature for the step's seven reads
    assert len(got) == len(reads)
    parsed = [pb.ClientReply.FromString(o.data) for o in got]
    assert len({p.root.SerializeToString() for p in parsed}) == 1
    assert sorted(p.index for p in parsed) == list(range(len(reads)))
    assert all(len(p.path) == 3 for p in parsed)  # a tree of 7 leaves is 3 levels deep
    for out, (s, ts, op) in zip(got, reads, strict=True):
        assert (out.client_key, out.timestamp) == (s.public_key, ts)
        checked = check(info, hv, out)
        assert (checked.replica, checked.seq, checked.status) == (1, 0, pb.REPLY_OK)
        assert checked.result == (b"1" if op == b"get a" else b"NOTFOUND")
    # A step with one read: one signature, and the reply has the shape it always had (index 0, no path).
    backup.on_request(make_request(who[1], CID, 1, 5, b"get a", read_only=True), 0.7)
    (alone,) = replies(backup.take_outputs())
    assert signers[1].signed == before + 2
    one = pb.ClientReply.FromString(alone.data)
    assert one.index == 0 and not one.path
    assert check(info, hv, alone).result == b"1"


def test_a_tampered_result_path_or_index_is_refused_by_the_client() -> None:
    info, _, hv, reps = cluster()
    write(reps, hv, b"set a 1")
    who = readers(hv, 5)
    for s in who:
        reps[2].on_request(make_request(s, CID, 1, 1, b"get a", read_only=True), 0.6)
    got = replies(reps[2].take_outputs())
    target = got[2]
    good = pb.ClientReply.FromString(target.data)
    check(info, hv, target)  # the genuine reply holds

    def refused(mutate: object) -> None:
        bad = pb.ClientReply()
        bad.CopyFrom(good)
        mutate(bad)  # type: ignore[operator]
        with pytest.raises(WireError):
            check_reply(bad.SerializeToString(), info, hv, target.client_key, 1, 1)

    def result(r: pb.ClientReply) -> None:
        r.result = r.result + b"!"

    def path(r: pb.ClientReply) -> None:
        r.path[0] = bytes([r.path[0][0] ^ 1]) + r.path[0][1:]

    def index(r: pb.ClientReply) -> None:
        r.index ^= 1

    def shorter(r: pb.ClientReply) -> None:
        del r.path[-1]

    def status(r: pb.ClientReply) -> None:
        r.status = pb.REPLY_INVALID_REQUEST

    def neighbour(r: pb.ClientReply) -> None:  # another reader's leaf and path under the same root
        other = pb.ClientReply.FromString(got[3].data)
        r.index, r.path[:] = other.index, other.path

    for mutate in (result, path, index, shorter, status, neighbour):
        refused(mutate)
    # Another reader's genuine reply is not ours.
    with pytest.raises(WireError):
        check_reply(got[3].data, info, hv, target.client_key, 1, 1)


def test_parked_reads_served_together_share_one_root_and_are_accepted_from_2f_plus_1() -> None:
    """Reads parked until seq 1 executes are all answered in that step: one ReplyRoot per replica
    for all of them, and the client's rule (2f+1 matching, distinct replicas) accepts each."""
    info, signers, hv, reps = cluster()
    who = readers(hv, 3)
    for r in reps:
        for s in who:
            assert r.on_request(make_request(s, CID, 1, 1, b"get a", read_only=True, min_seq=1), 0.4) is None
        assert not replies(r.take_outputs()) and len(r.pending_reads) == 3
    before = [s.read_roots for s in signers]
    writer = HashSigner(b"writer", hv)
    reps[0].on_request(make_request(writer, CID, 1, 1, b"set a 7"), 0.5)
    out = deliver(reps, {0: list[object](reps[0].take_outputs())}, 0.5)
    reads = [o for o in out if o.client_key != writer.public_key]
    assert len(reads) == 3 * len(reps)
    for i in range(len(reps)):
        mine = [m for m in map(pb.ClientReply.FromString, (o.data for o in reads)) if m.root.signer == i]
        assert len(mine) == 3 and len({m.root.SerializeToString() for m in mine}) == 1
    for s in who:
        collector = ReplyCollector.for_request(info.quorums, read_only=True)
        steps = [collector.add(check(info, hv, o)) for o in reads if o.client_key == s.public_key]
        need = info.quorums.read  # 2f+1
        assert steps[: need - 1] == [None] * (need - 1)
        accepted = steps[need - 1]
        assert accepted is not None and accepted.result == b"7" and accepted.seq == 0
    # Each replica signed ONE read root in that step, for all three reads.
    assert [s.read_roots - b for s, b in zip(signers, before, strict=True)] == [1] * len(reps)


def test_read_replies_leave_where_the_latest_read_was_answered() -> None:
    """After everything emitted before the step's last read (its state's records), and before what
    follows it, so a read reply never waits for outputs that came after it."""
    _, _, hv, reps = cluster()
    backup = reps[1]
    who = readers(hv, 2)
    other = HashSigner(b"other", hv)
    backup.on_request(make_request(who[0], CID, 1, 1, b"get a", read_only=True), 0.5)
    backup.on_request(make_request(other, CID, 1, 1, b"set x 1"), 0.5)  # forwarded to the primary
    backup.on_request(make_request(who[1], CID, 1, 1, b"get a", read_only=True), 0.5)
    kinds = [type(o).__name__ for o in backup.take_outputs()]
    assert kinds[-2:] == ["ToClient", "ToClient"] and "Send" in kinds[:-2]
    backup.on_request(make_request(who[0], CID, 1, 2, b"get a", read_only=True), 0.6)
    backup.on_request(make_request(other, CID, 1, 2, b"set x 2"), 0.6)
    outs = backup.take_outputs()
    assert isinstance(outs[0], ToClient) and any(isinstance(o, (Send, SetTimer)) for o in outs[1:])
