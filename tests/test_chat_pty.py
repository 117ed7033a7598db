"""``bftchat chat`` in a pseudo-terminal (stdlib pty): the prompt_toolkit session opens with the
messages that arrived while offline, shows a live message above the prompt while a line is half
typed, keeps that line intact, completes account names, and leaves on /quit with status 0.

The plain line mode (stdin not a terminal) is driven through a pipe at the end."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helper import Cluster
from test_cli import cli, new_key, ok

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("pty"), 4) as c:
        c.start_all()
        c.wait_healthy()
        c.wait_agree(timeout=30)
        yield c


class Terminal:
    """A process on the slave side of a pty; reads everything it draws, ANSI codes stripped."""

    def __init__(self, cmd: list[str], cwd: Path) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = {k: v for k, v in os.environ.items() if not k.startswith("BFTCHAT_")}
        env |= {"TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1", "COLUMNS": "120", "LINES": "40"}
        self.proc = subprocess.Popen(
            cmd, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, start_new_session=True
        )
        os.close(slave)
        self.master = master
        self.raw = b""

    @property
    def screen(self) -> str:
        return ANSI.sub(b"", self.raw).decode("utf-8", errors="replace")

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], min(left, 0.1))
            if ready:
                try:
                    self.raw += os.read(self.master, 65536)
                except OSError:  # the process closed the terminal
                    return

    def expect(self, text: str, timeout: float = 20.0, start: int = 0) -> int:
        """Wait until ``text`` appears on screen after offset ``start``; its end offset."""
        deadline = time.monotonic() + timeout
        while True:
            at = self.screen.find(text, start)
            if at >= 0:
                return at + len(text)
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not seen; screen: {self.screen[-2000:]!r}")
            self.pump(0.2)

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        os.close(self.master)


@pytest.mark.timeout(90)
def test_chat_in_a_terminal_shows_a_live_message(cluster: Cluster, tmp_path: Path) -> None:
    cfg = cluster.config_path
    alice, bob = new_key(tmp_path, "alice"), new_key(tmp_path, "bob")
    ok(cli(cfg, alice, "register", "alice"))
    ok(cli(cfg, bob, "register", "bob"))
    ok(cli(cfg, alice, "send", "bob", "while you were away"))

    cmd = [sys.executable, "-m", "client.cli", "--config", str(cfg), "--key", str(bob), "chat", "alice"]
    term = Terminal(cmd, tmp_path)
    try:
        pos = term.expect("alice: while you were away")  # caught up from the inbox on open
        pos = term.expect("alice>", start=pos)  # the prompt names the peer
        term.type("typing wh")  # half a line typed when the message arrives
        term.pump(0.5)
        ok(cli(cfg, alice, "send", "bob", "live hello"))
        pos = term.expect("alice: live hello", start=pos)
        term.type("ile it arrived\r")
        term.type("/to ali\t")  # completion of account names
        pos = term.expect("/to alice", start=pos)
        term.type("\r")
        pos = term.expect("-- talking to alice", start=pos)
        term.type("/quit\r")
        assert term.proc.wait(20) == 0
        term.pump(0.3)
    finally:
        term.close()

    got = ok(cli(cfg, alice, "--json", "inbox"))
    assert [(m["from"], m["text"]) for m in got] == [("bob", "typing while it arrived")]
    hist = ok(cli(cfg, bob, "--json", "history", "alice"))
    assert [h["text"] for h in hist] == ["while you were away", "live hello", "typing while it arrived"]
    assert ok(cli(cfg, bob, "--json", "inbox")) == []  # shown in the chat, so acknowledged


@pytest.mark.timeout(60)
def test_chat_plain_line_mode_without_a_terminal(cluster: Cluster, tmp_path: Path) -> None:
    cfg = cluster.config_path
    carol, dave = new_key(tmp_path, "carol"), new_key(tmp_path, "dave")
    ok(cli(cfg, carol, "register", "carol"))
    ok(cli(cfg, dave, "register", "dave"))
    ok(cli(cfg, dave, "send", "carol", "\x1b[2Jsneaky"))  # escape codes are shown, not obeyed
    lines = "/list ?ave\nno recipient yet? no: dave is the peer\n/to nobody\n/quit\n"
    proc = cli(cfg, carol, "chat", "dave", stdin=lines)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "dave: \\x1b[2Jsneaky" in out and "\x1b" not in out
    assert "  dave " in out  # /list
    assert "no such user: 'nobody'" in out
    got = ok(cli(cfg, dave, "--json", "inbox"))
    assert [m["text"] for m in got] == ["no recipient yet? no: dave is the peer"]
    as_json = ok(cli(cfg, carol, "--json", "chat", "dave", stdin="json line\n"))
    assert {"sent": "json line", "to": "dave"}.items() <= as_json[-1].items()
