"""``bftchat chat``: an interactive session (prompt_toolkit), or plain lines when not on a terminal.

Incoming messages arrive from ``ChatClient.messages()`` in a background task and are printed
through ``patch_stdout``, so they appear above the prompt while the user is typing. Account names
complete (refreshed by ``/list`` and ``/to``), input lines have an in-memory history, and the
conversation opens with the recent local history. Without a terminal the same commands are read
line by line from stdin (a daemon thread, so a blocked read never holds the process at exit) and
output is plain lines, or JSON objects with ``--json``.

Commands: ``/to NAME``, ``/list [PATTERN]``, ``/history``, ``/help``, ``/quit`` (or Ctrl-D);
any other line is sent to the current peer (``//text`` sends ``/text``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable

from client.chat import ChatClient, Message
from client.cli import (
    Out,
    history_json,
    history_line,
    message_json,
    message_text,
    record_in,
    record_out,
)
from client.errors import ChatClientError, RejectedError
from client.history import History

COMMANDS = ("/to", "/list", "/history", "/help", "/quit")
HELP = (
    "/to NAME  talk to NAME    /list [PATTERN]  accounts    /history  recent messages    "
    "/quit  leave (or Ctrl-D)    any other line is sent; //text sends /text"
)
RECENT = 20
MAX_COMPLETION_NAMES = 1000
RETRY_AFTER = 3.0  # seconds before live delivery is tried again after an error


class ChatSession:
    """The state and commands of one chat, shared by the prompt and plain-line front ends."""

    def __init__(self, client: ChatClient, history: History, out: Out, show: Callable[[str], None]) -> None:
        self.client = client
        self.history = history
        self.out = out
        self.show = show  # prints one line of text (above the prompt when there is one)
        self.me = client.me()
        self.peer: str | None = None
        self.names: list[str] = []

    def emit(self, obj: dict[str, object], text: str) -> None:
        if self.out.json:
            self.out.emit(obj, None)
        else:
            self.show(text)

    def error(self, message: str) -> None:
        self.emit({"error": "chat", "message": message}, f"! {message}")

    def words(self) -> list[str]:
        return [*COMMANDS, *self.names]

    async def refresh_names(self, pattern: str = "*", show: bool = False) -> None:
        names = []
        async for a in self.client.accounts(pattern):
            names.append(a.name)
            if show:
                self.emit({"name": a.name, "fingerprint": a.fingerprint}, f"  {a.name:<32} {a.fingerprint}")
            if len(names) >= MAX_COMPLETION_NAMES:
                break
        self.names = sorted(set(self.names) | set(names))

    def recent(self) -> None:
        if self.peer is None:
            return
        for e in self.history.conversation(self.me, self.peer, RECENT):
            self.emit(history_json(self.me, e), history_line(self.me, e, full=False))

    async def talk_to(self, name: str) -> None:
        acct = await self.client.lookup(name)
        self.peer = acct.name
        if acct.name not in self.names:
            self.names = sorted([*self.names, acct.name])
        self.emit({"talking_to": acct.name}, f"-- talking to {acct.name} (fingerprint {acct.fingerprint})")
        self.recent()

    async def receive(self, caught_up: asyncio.Event) -> None:
        """Show live messages forever (retrying after errors); each is kept in the history.
        ``caught_up`` is set once the messages that arrived while we were away are shown (or the
        first attempt failed), so that the session opens with them."""
        while True:
            try:
                async for m in self.client.messages(caught_up=caught_up):
                    self._incoming(m)
            except RejectedError as exc:  # e.g. the account is gone: retrying cannot help
                if not caught_up.is_set():
                    raise
                self.error(f"live delivery stopped: {exc}")
                return
            except ChatClientError as exc:
                self.error(f"live delivery interrupted: {exc}; retrying")
                caught_up.set()
            await asyncio.sleep(RETRY_AFTER)

    def _incoming(self, m: Message) -> None:
        record_in(self.history, self.me, m)
        self.emit(message_json(m), message_text(m, full=False))

    async def handle(self, line: str) -> bool:
        """Run one input line; False when the user leaves."""
        line = line.strip()
        if not line:
            return True
        try:
            return await self._handle(line)
        except ChatClientError as exc:
            self.error(str(exc))
            return True

    async def _handle(self, line: str) -> bool:
        if line.startswith("/") and not line.startswith("//"):
            cmd, _, rest = line.partition(" ")
            rest = rest.strip()
            if cmd in ("/quit", "/exit"):
                return False
            if cmd == "/to" and rest:
                await self.talk_to(rest)
            elif cmd == "/list":
                await self.refresh_names(rest or "*", show=True)
            elif cmd == "/history":
                self.recent()
            elif cmd == "/help":
                self.emit({"help": HELP}, HELP)
            else:
                self.error(f"unknown command {cmd!r} ({HELP})")
            return True
        text = line[1:] if line.startswith("//") else line
        if self.peer is None:
            self.error("nobody to send to: /to NAME first")
            return True
        sent = await self.client.send(self.peer, text)
        record_out(self.history, self.me, sent.recipient, text, sent.id, sent.seq, sent.timestamp_us)
        if self.out.json:
            self.out.emit({"sent": text, "to": sent.recipient, "id": sent.id, "seq": sent.seq}, None)
        return True


async def run_chat(client: ChatClient, history: History, peer: str | None, out: Out, *, tty: bool) -> int:
    """The chat loop; returns the exit status (0 on /quit or end of input)."""
    show: Callable[[str], None] = lambda text: print(text, flush=True)  # noqa: E731
    chat = ChatSession(client, history, out, show)
    if peer is not None:
        await chat.talk_to(peer)  # NoSuchUser ends the command before the session starts
    with contextlib.suppress(ChatClientError):  # completion is a convenience
        await chat.refresh_names()
    caught_up = asyncio.Event()
    receiver = asyncio.get_running_loop().create_task(chat.receive(caught_up))
    try:
        ready = asyncio.get_running_loop().create_task(caught_up.wait())
        await asyncio.wait({ready, receiver}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if receiver.done():
            receiver.result()  # a refusal before the session opened (not our account ...): exit with it
        if tty:
            await _prompt_loop(chat)
        else:
            await _line_loop(chat)
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
    return 0


async def _prompt_loop(chat: ChatSession) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import WordCompleter
    from prompt_toolkit.history import InMemoryHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    session: PromptSession[str] = PromptSession(
        history=InMemoryHistory(),
        completer=WordCompleter(chat.words, WORD=True),
        complete_while_typing=False,
    )
    chat.show(f"-- {chat.me}: /help for commands, /quit to leave")
    with patch_stdout():
        while True:
            try:
                line = await session.prompt_async(lambda: f"{chat.peer or '(nobody)'}> ")
            except KeyboardInterrupt:
                continue  # Ctrl-C clears the line; /quit or Ctrl-D leaves
            except EOFError:
                return
            if not await chat.handle(line):
                return


async def _line_loop(chat: ChatSession) -> None:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def reader() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(lines.put_nowait, line)
            loop.call_soon_threadsafe(lines.put_nowait, None)
        except (RuntimeError, ValueError, OSError):
            pass  # the loop closed (we are leaving) or stdin went away

    threading.Thread(target=reader, name="bftchat-stdin", daemon=True).start()
    while True:
        line = await lines.get()
        if line is None or not await chat.handle(line):
            return
