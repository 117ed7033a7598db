"""Fault injection on real replicas, the replica's side: the admin-signed command and the Admin
endpoint that applies it. The ``bftchat-fault`` tool that sends commands is ``bft.tools.faultctl``
(its names stay importable from here, and ``python -m bft.runtime.faultctl`` still runs it).

Nothing here implements a lie: the behaviours are the simulator's (``bft/faults.py``), wrapped
around the running replica's core (``Node.core``) and its links (``Node.link_policy``). The endpoint
exists only when a replica is started with ``--allow-fault-injection``, and it obeys only commands
signed by the cluster's admin key, for this replica, with a fresh timestamp (no replays).

The last accepted timestamp is made durable (``ADMIN_LAST`` in the data dir, written atomically and
fsynced) *before* a command takes effect, so a captured command cannot be replayed after the replica
restarts either (docs/NOTEBOOK.md, "Admin replay across restarts").
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from bft.crypto import Kind, Signer, Verifier, split_tag, tag
from bft.faults import BEHAVIOURS, ByzantineReplica, LinkPolicy
from bft.pb.bftchat.v1 import admin_pb2 as apb
from bft.wire import WireError, parse

FAULT_METHOD = "/bftchat.v1.Admin/Fault"
MAX_SKEW_US = 5 * 60 * 1_000_000
ADMIN_LAST_FILE = "ADMIN_LAST"  # in the data dir: the last accepted command's timestamp (decimal µs)
LINK_FAULTS = ("drop-to", "slow")
ALL_FAULTS = (*sorted(BEHAVIOURS), *LINK_FAULTS, "crash", "heal")


class FaultError(ValueError):
    """A fault command that is malformed, unsigned, for another replica, replayed, or unknown."""


def sign_command(admin: Signer, cluster_id: bytes, cmd: apb.FaultCommand) -> apb.AdminRequest:
    body = tag(Kind.ADMIN, cluster_id) + cmd.SerializeToString()
    return apb.AdminRequest(body=body, signature=admin.sign(body))


def check_command(
    req: apb.AdminRequest,
    cluster_id: bytes,
    admin_key: bytes | None,
    verifier: Verifier,
    replica_id: int,
    last_timestamp: int,
    now_us: int,
) -> apb.FaultCommand:
    """Verify before parsing; then: for us, fresh, and naming only known behaviours."""
    if admin_key is None:
        raise FaultError("the cluster config has no admin_public_key")
    split = split_tag(req.body, cluster_id)
    if split is None or split[0] != Kind.ADMIN:
        raise FaultError("not an admin command of this cluster")
    if not verifier.verify(admin_key, req.body, req.signature):
        raise FaultError("bad admin signature")
    try:
        cmd = parse(apb.FaultCommand, split[1])
    except WireError as exc:
        raise FaultError(str(exc)) from None
    if cmd.replica_id != replica_id:
        raise FaultError(f"command is for replica {cmd.replica_id}, this is replica {replica_id}")
    if cmd.timestamp_us <= last_timestamp:
        raise FaultError("replayed or out-of-order command")
    if abs(cmd.timestamp_us - now_us) > MAX_SKEW_US:
        raise FaultError("command timestamp too far from this replica's clock")
    unknown = [b for b in cmd.behaviours if b not in BEHAVIOURS]
    if unknown:
        raise FaultError(f"unknown behaviour(s): {', '.join(unknown)}")
    return cmd


@dataclass
class FaultState:
    behaviours: tuple[str, ...] = ()
    drop_to: tuple[int, ...] = ()
    slow_ms: int = 0

    def describe(self) -> list[str]:
        out = list(self.behaviours)
        out += [f"drop-to {j}" for j in self.drop_to]
        if self.slow_ms:
            out.append(f"slow {self.slow_ms}")
        return out


def read_last_timestamp(path: Path) -> int:
    """The persisted last accepted timestamp; 0 if none. A file we cannot read or parse is an error
    (starting from 0 would reopen every captured command to replay)."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    if not text.isdigit():
        raise FaultError(f"{path}: not a timestamp: {text[:40]!r}")
    return int(text)


def write_last_timestamp(path: Path, timestamp: int) -> None:
    """Atomically and durably: write a temporary file, fsync it, rename it over, fsync the dir."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"%d\n" % timestamp)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class FaultController:
    """The replica side: applies verified commands to a running ``Node``.

    ``state_file`` (``ADMIN_LAST`` in the data dir) keeps the last accepted timestamp across
    restarts; without it (unit tests) the replay guard lasts only as long as the process.
    """

    def __init__(
        self,
        node: Any,
        cluster_id: bytes,
        admin_key: bytes | None,
        verifier: Verifier,
        state_file: Path | None = None,
    ) -> None:
        self.node = node
        self.cluster_id = cluster_id
        self.admin_key = admin_key
        self.verifier = verifier
        self.state_file = state_file
        self.last_timestamp = read_last_timestamp(state_file) if state_file is not None else 0
        self.state = FaultState()

    def handle(self, raw: bytes) -> apb.AdminReply:
        try:
            req = parse(apb.AdminRequest, raw)
            cmd = check_command(
                req,
                self.cluster_id,
                self.admin_key,
                self.verifier,
                self.node.id,
                self.last_timestamp,
                int(time.time() * 1_000_000),
            )
        except (FaultError, WireError) as exc:
            return apb.AdminReply(ok=False, message=str(exc), active=self.state.describe())
        if self.state_file is not None:
            try:  # durable before it takes effect: a crash after acting must not reopen it to replay
                write_last_timestamp(self.state_file, cmd.timestamp_us)
            except OSError as exc:
                return apb.AdminReply(
                    ok=False,
                    message=f"cannot persist the command timestamp: {exc}",
                    active=self.state.describe(),
                )
        self.last_timestamp = cmd.timestamp_us
        if cmd.crash:
            self.node.events.warning("fault_crash")
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, os._exit, 137)  # after the reply is on its way
            return apb.AdminReply(ok=True, message="crashing", active=["crash"])
        honest = self.node.replica
        if cmd.heal:
            self.state = FaultState()
            self.node.core = honest
            self.node.link_policy = LinkPolicy()
        else:
            names = tuple(dict.fromkeys((*self.state.behaviours, *cmd.behaviours)))
            drop = tuple(sorted({*self.state.drop_to, *cmd.drop_to}))
            slow = cmd.slow_ms or self.state.slow_ms
            self.state = FaultState(names, drop, slow)
            behaviours = [BEHAVIOURS[n]() for n in names]
            rng = random.Random(int.from_bytes(os.urandom(8), "big"))
            self.node.core = ByzantineReplica(honest, behaviours, rng) if behaviours else honest
            self.node.link_policy = LinkPolicy(drop_to=set(drop), delay=slow / 1000)
        self.node.faults = self.state.describe()
        self.node.events.warning("fault_injected", active=",".join(self.state.describe()) or "none")
        return apb.AdminReply(ok=True, message="ok", active=self.state.describe())


def admin_handler(controller: FaultController) -> grpc.GenericRpcHandler:
    """The Admin service as a generic handler on raw bytes (added to the client port's server)."""

    async def fault(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return controller.handle(request).SerializeToString()

    handler = grpc.unary_unary_rpc_method_handler(fault)
    return grpc.method_handlers_generic_handler("bftchat.v1.Admin", {"Fault": handler})


# ---- moved to bft.tools.faultctl (the bftchat-fault tool) ---------------------------------------
# Served lazily (PEP 562): bft.tools.faultctl imports this module, so importing it back at load time
# would be circular.

_MOVED = ("parse_faults", "send_fault", "build_parser", "main")

if TYPE_CHECKING:
    from bft.tools.faultctl import build_parser as build_parser
    from bft.tools.faultctl import main as main
    from bft.tools.faultctl import parse_faults as parse_faults
    from bft.tools.faultctl import send_fault as send_fault


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from bft.tools import faultctl as moved

        return getattr(moved, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from bft.tools.faultctl import main as _main

    raise SystemExit(_main())
