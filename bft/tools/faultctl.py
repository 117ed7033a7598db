"""The ``bftchat-fault`` tool: make one replica Byzantine by sending it an admin-signed fault
command. The replica's side (checking and applying commands) is ``bft.runtime.faultctl``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import grpc.aio

from bft.clusterconf import add_config_argument
from bft.faults import BEHAVIOURS
from bft.pb.bftchat.v1 import admin_pb2 as apb
from bft.runtime.faultctl import ALL_FAULTS, FAULT_METHOD, LINK_FAULTS, FaultError, sign_command
from bft.version import add_version_argument
from bft.wire import parse


def parse_faults(words: Sequence[str]) -> apb.FaultCommand:
    """``equivocate lie-to-clients``, ``drop-to 3 drop-to 4``, ``slow 200``, ``crash``, ``heal``."""
    cmd = apb.FaultCommand()
    it = iter(words)
    for w in it:
        if w in BEHAVIOURS:
            cmd.behaviours.append(w)
        elif w in LINK_FAULTS:
            arg = next(it, None)
            if arg is None or not arg.isdigit():
                raise FaultError(f"{w} needs a number (drop-to REPLICA, slow MS)")
            if w == "drop-to":
                cmd.drop_to.append(int(arg))
            else:
                cmd.slow_ms = int(arg)
        elif w == "crash":
            cmd.crash = True
        elif w == "heal":
            cmd.heal = True
        else:
            raise FaultError(f"unknown fault {w!r}; choose from: {', '.join(ALL_FAULTS)}")
    if not (cmd.behaviours or cmd.drop_to or cmd.slow_ms or cmd.crash or cmd.heal):
        raise FaultError("name at least one fault (or heal)")
    if cmd.heal and (cmd.behaviours or cmd.drop_to or cmd.slow_ms or cmd.crash):
        raise FaultError("heal cannot be combined with other faults")
    return cmd


async def send_fault(
    endpoint: str, ca_pem: bytes | None, req: apb.AdminRequest, timeout: float = 5.0
) -> apb.AdminReply:
    if ca_pem is None:
        channel = grpc.aio.insecure_channel(endpoint)
    else:
        channel = grpc.aio.secure_channel(endpoint, grpc.ssl_channel_credentials(root_certificates=ca_pem))
    async with channel:
        raw = await channel.unary_unary(FAULT_METHOD)(req.SerializeToString(), timeout=timeout)
        assert isinstance(raw, bytes)
        return parse(apb.AdminReply, raw)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bftchat-fault",
        description="Make one replica Byzantine (it must run with --allow-fault-injection).",
        epilog=f"faults: {', '.join(ALL_FAULTS)} (drop-to J and slow MS take a number)",
    )
    add_version_argument(ap)
    add_config_argument(ap)
    ap.add_argument("--replica", type=int, required=True, help="replica id")
    ap.add_argument("--admin-key", help="admin key file (default: admin.key beside the config)")
    ap.add_argument("--insecure", action="store_true", help="plaintext (replicas run with --insecure)")
    ap.add_argument(
        "faults", nargs="+", metavar="FAULT", help="faults to set (listed below); heal clears them all"
    )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from bft.clusterconf import ConfigError, load_config
    from bft.keys import KeyFileError, load_admin_key

    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if not 0 <= args.replica < config.n:
            raise FaultError(f"no replica {args.replica} in a cluster of {config.n}")
        cmd = parse_faults(args.faults)
        cmd.replica_id = args.replica
        cmd.timestamp_us = int(time.time() * 1_000_000)
        admin = load_admin_key(
            Path(args.admin_key) if args.admin_key else Path(config.path).parent / "admin.key"
        )
        req = sign_command(admin, config.cluster_id, cmd)
        if not args.insecure and config.tls_ca is None:
            raise FaultError(f"{config.path} has no tls_ca: pass --insecure to send in plaintext")
        ca = None if args.insecure or config.tls_ca is None else config.tls_ca.read_bytes()
        reply = asyncio.run(send_fault(config.address(args.replica).endpoint, ca, req))
    except (ConfigError, KeyFileError, FaultError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            print(
                f"error: replica {args.replica} does not accept fault injection "
                "(start it with --allow-fault-injection)",
                file=sys.stderr,
            )
        elif cmd.crash and exc.code() == grpc.StatusCode.UNAVAILABLE:
            print(f"replica {args.replica}: crashed")
            return 0
        else:
            print(f"error: replica {args.replica}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    if not reply.ok:
        print(f"error: replica {args.replica} refused: {reply.message}", file=sys.stderr)
        return 1
    print(f"replica {args.replica}: {', '.join(reply.active) or 'honest'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
