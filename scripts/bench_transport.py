#!/usr/bin/env python3
"""CPU per message of the two transports a replica uses, measured in isolation on this machine.

A client sends a 400-byte frame and waits for a 400-byte answer, N times, over loopback TLS (a
throwaway CA and certificate, as ``bftchat-keygen`` makes them). The *server* process's CPU time
per round trip (one read and one write) is printed for:

* grpc.aio bidirectional stream: what the client port serves (``Session``), and what peer links
  used before the second session;
* length-prefixed frames on asyncio streams (``bft/runtime/peers.py``'s framing): what peer links
  use now;

each on asyncio's own event loop and on uvloop. This is the per-message cost behind the notes in
docs/NOTEBOOK.md ("Peer transport") and docs/PERFORMANCE.md ("What would close the gap").

Usage: .venv/bin/python scripts/bench_transport.py [--count N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import grpc.aio

from bft.runtime import tls
from bft.runtime.peers import encode_frame, read_frame

MSG = b"x" * 400
METHOD = "/bench.Echo/Session"


def _certs(directory: Path) -> tuple[Path, Path, Path]:
    ca = tls.make_ca(directory)
    cert, key = tls.replica_cert_paths(directory, 0)
    tls.write_cert_and_key(cert, key, *tls.make_replica_cert(ca, 0, ["127.0.0.1"]))
    return directory / tls.CA_CERT_FILE, cert, key


# ---------------------------------------------------------------- the server side (child process)


async def _grpc_server(ca: Path, cert: Path, key: Path, ready: str) -> None:
    async def session(requests: object, context: grpc.aio.ServicerContext) -> None:
        async for _ in requests:  # type: ignore[attr-defined]
            await context.write(MSG)

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Session": grpc.stream_stream_rpc_method_handler(session)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port(
        "127.0.0.1:0", tls.server_credentials(ca, cert, key, require_client_auth=False)
    )
    await server.start()
    await _serve(port, ready)
    await server.stop(None)


async def _framed_server(ca: Path, cert: Path, key: Path, ready: str) -> None:
    ctx = tls.peer_contexts(ca, cert, key).server
    ctx.verify_mode = ssl.CERT_NONE  # like the client port: server-authenticated TLS

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_frame(reader, 1 << 20) is not None:
            writer.write(encode_frame(MSG))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    await _serve(server.sockets[0].getsockname()[1], ready)
    server.close()


async def _serve(port: int, ready: str) -> None:
    """Print the port, then report this process's CPU between the client's two marks on stdin."""
    loop = asyncio.get_running_loop()
    print(port, flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # client connected and warmed up
    start = time.process_time()
    await loop.run_in_executor(None, sys.stdin.readline)  # client done
    print(f"{time.process_time() - start:.6f}", flush=True)


def server_main(kind: str, loop: str, certs: list[str]) -> None:
    ca, cert, key = (Path(p) for p in certs)
    coro = (_grpc_server if kind == "grpc" else _framed_server)(ca, cert, key, "")
    if loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


# ---------------------------------------------------------------- the client side (this process)


async def _grpc_client(port: int, ca: Path, count: int, mark: object) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        call = ch.stream_stream(METHOD)()
        for i in range(count + 200):
            if i == 200:
                mark()  # type: ignore[operator]
            await call.write(MSG)
            await call.read()
        await call.done_writing()


async def _framed_client(port: int, ca: Path, count: int, mark: object) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    for i in range(count + 200):
        if i == 200:
            mark()  # type: ignore[operator]
        writer.write(encode_frame(MSG))
        await read_frame(reader, 1 << 20)
    writer.close()


def measure(kind: str, loop: str, certs: tuple[Path, Path, Path], count: int) -> float:
    """Server CPU µs per round trip."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, loop, *map(str, certs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        port = int(proc.stdout.readline())

        def mark() -> None:
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]

        client = _grpc_client if kind == "grpc" else _framed_client
        asyncio.run(client(port, certs[0], count, mark))
        mark()
        seconds = float(proc.stdout.readline())
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
    return 1e6 * seconds / count


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        server_main(sys.argv[2], sys.argv[3], sys.argv[4:7])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="round trips per measurement")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; {args.count} round trips of 400 B")
    print("server CPU per round trip (one read + one write), TLS on loopback:")
    with tempfile.TemporaryDirectory() as tmp:
        certs = _certs(Path(tmp))
        for kind, label in (("grpc", "grpc.aio stream"), ("framed", "framed asyncio stream")):
            for loop in ("asyncio", "uvloop"):
                print(f"  {label:24} {loop:8} {measure(kind, loop, certs, args.count):7.1f} µs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
