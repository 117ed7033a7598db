"""Client-side acceptance of replies: one implementation for the client library and the simulator.

A reply counts only if its replica signature over the batch's result root verifies and the
client's own leaf hashes up to that root. A result is accepted once ``needed`` distinct replicas
vouch for the same (status, result): f+1 for ordered requests, 2f+1 for one-round reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from bft import merkle
from bft.core.config import ClusterInfo
from bft.core.replica import leaf_bytes
from bft.core.viewchange import open_replica
from bft.crypto import Kind, Verifier
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.quorums import Quorums
from bft.wire import WireError, parse


@dataclass(frozen=True, slots=True)
class CheckedReply:
    replica: int
    view: int
    seq: int
    status: int
    result: bytes
    # The exact serialised ClientReply (kept for receipts, ``client.receipts``), the batch root
    # it vouches for, and on an accepted reply the raw replies of every replica that agreed.
    raw: bytes = field(default=b"", compare=False, repr=False)
    root: bytes = field(default=b"", compare=False, repr=False)
    proof: tuple[bytes, ...] = field(default=(), compare=False, repr=False)


def check_reply(
    raw: bytes, cluster: ClusterInfo, verifier: Verifier, key: bytes, session: int, timestamp: int
) -> CheckedReply:
    """Verify one serialised ClientReply for our request; WireError if it does not hold up."""
    reply = parse(pb.ClientReply, raw)
    if (reply.client_key, reply.session, reply.timestamp) != (key, session, timestamp):
        raise WireError("reply for another request")
    root = parse(pb.ReplyRoot, open_replica(reply.root, Kind.REPLY, cluster, verifier))
    leaf = merkle.leaf_hash(leaf_bytes(key, session, timestamp, reply.status, reply.result))
    if merkle.root_from_path(leaf, reply.index, list(reply.path)) != root.root:
        raise WireError("reply leaf does not match the signed root")
    return CheckedReply(reply.root.signer, root.view, root.seq, reply.status, reply.result, raw, root.root)


@dataclass
class ReplyCollector:
    """Tallies verified replies for one request until ``needed`` replicas agree.

    The accepted reply's view and seq are each the ``trust``-th highest (f+1-th) among the matching
    replies: at least one honest replica reported that much. Taking the highest let one faulty
    replica, echoing the honest result with seq 2^62, make every later read of the session wait for
    a seq that never comes.
    """

    needed: int
    trust: int
    votes: dict[int, CheckedReply] = field(default_factory=dict)

    @classmethod
    def for_request(cls, quorums: Quorums, read_only: bool) -> ReplyCollector:
        """f+1 matching replies for an ordered request, 2f+1 for a one-round read; trust f+1."""
        return cls(quorums.read if read_only else quorums.reply, quorums.f + 1)

    def add(self, reply: CheckedReply) -> CheckedReply | None:
        """Record a reply (one per replica, the latest wins); return the accepted one, if any."""
        self.votes[reply.replica] = reply
        tally: dict[tuple[int, bytes], list[CheckedReply]] = {}
        for r in self.votes.values():
            tally.setdefault((r.status, r.result), []).append(r)
        for group in tally.values():
            if len(group) >= self.needed:
                k = min(self.trust, len(group)) - 1
                view = sorted((r.view for r in group), reverse=True)[k]
                seq = sorted((r.seq for r in group), reverse=True)[k]
                proof = tuple(r.raw for r in sorted(group, key=lambda r: r.replica))
                return replace(min(group, key=lambda r: r.replica), view=view, seq=seq, proof=proof)
        return None

    def disagreement(self) -> dict[tuple[int, bytes], list[int]]:
        """Which replicas said what: for errors that name the disagreement."""
        out: dict[tuple[int, bytes], list[int]] = {}
        for r in self.votes.values():
            out.setdefault((r.status, r.result), []).append(r.replica)
        return out
