"""VIEW-CHANGE and NEW-VIEW: validating certificates and recomputing the re-proposed set.

Everything here is a pure function of signed messages, so a backup recomputes exactly what the new
primary should have proposed and rejects a NEW-VIEW that differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from bft.core.config import ClusterInfo
from bft.crypto import Kind, Verifier, sha256
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.wire import WireError, open_envelope, parse

NULL_DIGEST = sha256(b"")
"""Digest of the empty batch, which fills gaps in a NEW-VIEW (a "null request")."""


@dataclass(frozen=True, slots=True)
class PreparedCert:
    view: int
    seq: int
    digest: bytes
    proof: pb.PreparedProof


@dataclass(frozen=True, slots=True)
class ValidViewChange:
    sender: int
    new_view: int
    stable_seq: int
    stable_digest: bytes
    stable_proof: tuple[pb.Envelope, ...]
    certs: dict[int, PreparedCert]
    envelope: pb.Envelope
    epoch: int = 0  # the signer's epoch when it signed (docs/PROTOCOL.md, Epochs)


def open_replica(env: pb.Envelope, kind: Kind, cluster: ClusterInfo, verifier: Verifier) -> bytes:
    """Verify a replica-signed envelope; WireError if the signer is unknown, the body above its
    kind's size cap (checked before the signature), the signature bad or the body not canonical."""
    if env.signer >= cluster.n:
        raise WireError(f"unknown replica {env.signer}")
    cap = cluster.caps.body.get(kind)
    if cap is not None and len(env.body) > cap:
        raise WireError(f"{kind.name} body of {len(env.body)} bytes exceeds its cap of {cap}")
    return open_envelope(env, kind, cluster.cluster_id, cluster.public_keys[env.signer], verifier)


def check_checkpoint_proof(
    cluster: ClusterInfo, verifier: Verifier, seq: int, digest: bytes, proof: list[pb.Envelope]
) -> bool:
    """2f+1 CHECKPOINTs from distinct replicas, all for (seq, digest), at most n, each verified.
    Seq 0 is genesis: no proof."""
    if seq == 0:
        return True
    if len(proof) > cluster.n:
        return False
    signers: set[int] = set()
    for env in proof:
        try:
            ck = parse(pb.Checkpoint, open_replica(env, Kind.CHECKPOINT, cluster, verifier))
        except WireError:
            return False
        if ck.seq != seq or ck.state_digest != digest or env.signer in signers:
            return False
        signers.add(env.signer)
    return len(signers) >= cluster.quorums.checkpoint


def check_prepared_proof(cluster: ClusterInfo, verifier: Verifier, proof: pb.PreparedProof) -> PreparedCert:
    """A PRE-PREPARE by the view's primary plus exactly 2f matching PREPAREs from distinct backups,
    every envelope verified (what an honest replica builds; anything else is padding or forgery)."""
    pp = parse(pb.PrePrepare, open_replica(proof.preprepare, Kind.PREPREPARE, cluster, verifier))
    primary = cluster.primary(pp.view)
    if proof.preprepare.signer != primary:
        raise WireError("pre-prepare not signed by the view's primary")
    if len(proof.prepares) != cluster.quorums.prepare:
        raise WireError("a prepared certificate carries exactly 2f prepares")
    backups: set[int] = set()
    for env in proof.prepares:
        p = parse(pb.Prepare, open_replica(env, Kind.PREPARE, cluster, verifier))
        if env.signer == primary or env.signer in backups:
            raise WireError("prepare from the primary or twice from one backup")
        if (p.view, p.seq, p.digest) != (pp.view, pp.seq, pp.digest):
            raise WireError("prepare does not match the pre-prepare")
        backups.add(env.signer)
    return PreparedCert(pp.view, pp.seq, pp.digest, proof)


def check_view_change(cluster: ClusterInfo, verifier: Verifier, env: pb.Envelope) -> ValidViewChange:
    """Verify a VIEW-CHANGE and every certificate inside it (a faulty replica fabricates them)."""
    vc = parse(pb.ViewChange, open_replica(env, Kind.VIEW_CHANGE, cluster, verifier))
    window = cluster.params.watermark_window
    if vc.stable_seq == 0 and (vc.stable_digest or len(vc.checkpoint_proof)):
        raise WireError("genesis checkpoint carries no digest or proof")
    if vc.stable_seq % cluster.params.checkpoint_interval:
        raise WireError("stable checkpoint not at a checkpoint interval")
    if not check_checkpoint_proof(
        cluster, verifier, vc.stable_seq, vc.stable_digest, list(vc.checkpoint_proof)
    ):
        raise WireError("bad checkpoint proof in view change")
    if len(vc.prepared) > window:
        raise WireError("too many prepared certificates")
    certs: dict[int, PreparedCert] = {}
    for proof in vc.prepared:
        cert = check_prepared_proof(cluster, verifier, proof)
        if cert.view >= vc.new_view:
            raise WireError("prepared certificate from a view not below the new view")
        if not vc.stable_seq < cert.seq <= vc.stable_seq + window:
            raise WireError("prepared certificate outside the watermark window")
        if cert.seq in certs:
            raise WireError("two prepared certificates for one sequence number")
        certs[cert.seq] = cert
    return ValidViewChange(
        env.signer,
        vc.new_view,
        vc.stable_seq,
        vc.stable_digest,
        tuple(vc.checkpoint_proof),
        certs,
        env,
        vc.epoch,
    )


@dataclass(frozen=True, slots=True)
class NewViewPlan:
    """What a NEW-VIEW must contain, computed from its VIEW-CHANGEs."""

    min_s: int
    stable_digest: bytes
    stable_proof: tuple[pb.Envelope, ...]
    proposals: tuple[tuple[int, bytes], ...]  # (seq, digest) for every seq in (min_s, max_s]


def plan_new_view(vcs: list[ValidViewChange]) -> NewViewPlan:
    """min-s = highest stable checkpoint; for each later seq the highest-view prepared digest, else null."""
    best = max(vcs, key=lambda v: (v.stable_seq, v.sender))
    min_s = best.stable_seq
    chosen: dict[int, PreparedCert] = {}
    for vc in vcs:
        for seq, cert in vc.certs.items():
            if seq <= min_s:
                continue
            cur = chosen.get(seq)
            # Highest view wins; a tie of two digests in one view needs > f liars, broken by digest.
            if cur is None or (cert.view, cert.digest) > (cur.view, cur.digest):
                chosen[seq] = cert
    max_s = max(chosen, default=min_s)
    proposals = tuple(
        (seq, chosen[seq].digest if seq in chosen else NULL_DIGEST) for seq in range(min_s + 1, max_s + 1)
    )
    return NewViewPlan(min_s, best.stable_digest, best.stable_proof, proposals)
