"""``bftchat chat``: an interactive session (prompt_toolkit), or plain lines when not on a terminal.

Incoming messages arrive from ``ChatClient.messages()`` in a background task and are printed
through ``patch_stdout``, so they appear above the prompt while the user is typing. Account names
complete (refreshed by ``/list`` and ``/to``), input lines have an in-memory history, and the
conversation opens with the recent local history. Without a terminal the same commands are read
line by line from stdin (a daemon thread, so a blocked read never holds the process at exit) and
output is plain lines, or JSON objects with ``--json``.

Commands: ``/to NAME``, ``/list [PATTERN]``, ``/history``, ``/outbox``, ``/give-up [ID|all]``,
``/accept-new-key [NAME]``, ``/help``, ``/quit`` (or Ctrl-D); any other line is sent to the current
peer as typed (``//text`` sends ``/text``).

Sending never blocks the prompt: a line goes into the outbox (``client.local``) and a sender task
delivers the outbox in order, so a line typed while the cluster is down is kept, shown as not sent
yet, and resent (the same signed bytes) when the cluster answers. Leaving waits for the messages
still being sent unless the cluster is not answering (they stay in the outbox for the next run).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import threading
from collections.abc import Callable

from bft.app.names import normalize_name
from client.chat import ChatClient, Message
from client.errors import ChatClientError, ClusterUnreachable, RejectedError
from client.history import FAILED, UNKNOWN
from client.local import Local, Outcome, give_up
from client.output import (
    DROPPED,
    SENT,
    WAITING,
    Out,
    history_lines,
    key_changed_note,
    message_json,
    message_text,
    outbox_json,
    outbox_text,
)

COMMANDS = ("/to", "/list", "/history", "/outbox", "/give-up", "/accept-new-key", "/help", "/quit")
HELP = (
    "/to NAME  talk to NAME    /list [PATTERN]  accounts    /history  recent messages    "
    "/outbox  messages not sent yet    /give-up [ID|all]  stop resending them    "
    "/accept-new-key [NAME]  trust a changed key    /quit  leave (or Ctrl-D)    "
    "any other line is sent as typed; //text sends /text"
)
RECENT = 20
MAX_COMPLETION_NAMES = 1000
RETRY_AFTER = 3.0  # seconds before live delivery, or the outbox, is tried again after an error


def short(exc: ChatClientError) -> str:
    """An error as one short line for the chat screen (no per-replica reasons)."""
    return exc.short if isinstance(exc, ClusterUnreachable) else str(exc)


class _Then(asyncio.Event):
    """An event that also runs ``then()`` each time it is set from unset (``messages()`` sets its
    ``caught_up`` after every catch-up)."""

    def __init__(self, then: Callable[[], None]) -> None:
        super().__init__()
        self.then = then

    def set(self) -> None:
        if not self.is_set():
            super().set()
            self.then()


class ChatSession:
    """The state and commands of one chat, shared by the prompt and plain-line front ends."""

    def __init__(self, client: ChatClient, local: Local, out: Out, show: Callable[[str], None]) -> None:
        self.client = client
        self.local = local
        self.history = local.store
        self.out = out
        self.show = show  # prints one line of text (above the prompt when there is one)
        self.me = client.me()
        self.peer: str | None = None
        self.names: list[str] = []
        self.wake = asyncio.Event()  # something was queued in the outbox
        self.closing = False
        self.sending = False  # the sender task is delivering right now
        self.stuck: int | None = None  # the outbox row the last delivery stopped at (no answer)
        self.told: set[int] = set()  # outbox rows the user was told are not sent yet
        self.changed: dict[bytes, bool] = {}  # received messages stored: from a changed key?
        self.interrupted = False  # live delivery failed and has not caught up since (said once)

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
        for obj, text in history_lines(self.me, self.history.conversation(self.me, self.peer, RECENT), False):
            if obj:
                self.emit(obj, text)
            elif not self.out.json:
                self.show(text)

    async def talk_to(self, name: str) -> None:
        acct = await self.client.lookup(name)
        self.peer = acct.name
        if acct.name not in self.names:
            self.names = sorted([*self.names, acct.name])
        changed = self.local.key_changed(acct)
        warn = (
            f"; KEY CHANGED since you first talked: sends are refused until /accept-new-key {acct.name}"
            if changed
            else ""
        )
        self.emit(
            {"talking_to": acct.name, "fingerprint": acct.fingerprint, "key_changed": changed},
            f"-- talking to {acct.name} (fingerprint {acct.fingerprint}){warn}",
        )
        self.recent()

    async def receive(self, caught_up: asyncio.Event) -> None:
        """Show live messages forever (retrying after errors); each is kept in the history.
        ``caught_up`` is set once the messages that arrived while we were away are shown (or the
        first attempt failed), so that the session opens with them.

        An outage is said once: one line when delivery is interrupted, one when it is back; the
        retries in between (every RETRY_AFTER seconds plus the request timeout) are silent."""
        while True:
            attempt = _Then(lambda: self._delivering(caught_up))
            try:
                async for m in self.client.messages(caught_up=attempt, keep=self._keep):
                    self._incoming(m)
            except sqlite3.Error as exc:  # not stored, so not acknowledged: it stays on the replicas
                self.error(
                    f"live delivery stopped: cannot store a received message ({exc}); it stays undelivered"
                )
                caught_up.set()
                return
            except RejectedError as exc:  # e.g. the account is gone: retrying cannot help
                if not caught_up.is_set():
                    raise
                self.error(f"live delivery stopped: {exc}")
                return
            except ChatClientError as exc:
                if not self.interrupted:
                    self.interrupted = True
                    self.emit(
                        {"error": "chat", "code": exc.code, "delivery": "interrupted", "message": short(exc)},
                        f"! live delivery interrupted: {short(exc)}; retrying quietly until it is back",
                    )
                caught_up.set()
            await asyncio.sleep(RETRY_AFTER)

    def _delivering(self, caught_up: asyncio.Event) -> None:
        """Live delivery caught up (again): say so once after an interruption."""
        caught_up.set()
        if self.interrupted:
            self.interrupted = False
            self.emit({"delivery": "reconnected"}, "-- reconnected: live delivery is back")

    def _keep(self, m: Message) -> None:
        """Store a received message; the iterator acknowledges it only after this returned."""
        self.changed[m.ref] = self.local.record_in(m)

    def _incoming(self, m: Message) -> None:
        changed = self.changed.pop(m.ref, False)
        self.emit(message_json(m, changed), message_text(m, full=False, key_changed=changed))
        if changed:
            self.error(key_changed_note(m.sender)[2:])

    # ---- sending: the outbox

    async def sender(self) -> None:
        """Deliver the outbox, in order, whenever something is queued, and every RETRY_AFTER
        seconds while a message gets no agreed answer. Returns once closing and nothing more can
        be done now."""
        while True:
            self.wake.clear()
            self.sending = True
            try:
                stuck = await self.local.deliver(self._report)
            finally:
                self.sending = False
            self.stuck = stuck.row.id if stuck is not None else None
            if self.closing and (stuck is not None or not self.wake.is_set()):
                return  # (rows another process is sending are not ours to wait for)
            if self.closing:
                continue  # something was queued during this pass
            if stuck is None:
                await self.wake.wait()
            else:
                with contextlib.suppress(TimeoutError):  # (not wait_for: see ChatClient._news)
                    async with asyncio.timeout(RETRY_AFTER):
                        await self.wake.wait()

    def _report(self, o: Outcome) -> None:
        row, err = o.row, str(o.error or "")
        if o.state == SENT and o.sent is not None:
            if self.out.json:
                obj = {"sent": row.text, "to": row.peer, "id": o.sent.id, "seq": o.sent.seq, "outbox": row.id}
                self.out.emit(obj, None)
            elif row.id in self.told:
                self.show(f"-- sent to {row.peer} after all (outbox #{row.id}, message {o.sent.id})")
            self.told.discard(row.id)
        elif o.state == WAITING:
            if row.id not in self.told and o.error is not None:
                self.told.add(row.id)
                self.emit(
                    outbox_json(row, "waiting") | {"error": o.error.code},
                    f"! not sent yet to {row.peer} (outbox #{row.id}): {short(o.error)}; kept in the "
                    "outbox and resent when the cluster answers (/outbox lists, /give-up stops)",
                )
        elif o.state in (FAILED, DROPPED):
            self.told.discard(row.id)
            self.emit(outbox_json(row, o.state) | {"error": err}, f"! not sent to {row.peer}: {err}")
        elif o.state == UNKNOWN:
            self.told.discard(row.id)
            self.emit(
                outbox_json(row, o.state) | {"error": err},
                f"! message to {row.peer} (outbox #{row.id}): {err}",
            )

    async def close(self, sender: asyncio.Task[None]) -> None:
        """Leaving: let the sender finish what it can now (not when the cluster is not answering)."""
        self.closing = True
        if sender.done():
            return
        if not self.sending and (self.stuck is not None or not self.local.waiting()):
            sender.cancel()
            return
        waiting = len(self.local.waiting())
        if waiting and not self.out.json:
            self.show(
                f"-- sending {waiting} message(s) before leaving (Ctrl-C leaves now; they stay in the outbox)"
            )
        self.wake.set()
        await sender

    # ---- input

    async def handle(self, line: str) -> bool:
        """Run one input line (without its line end); False when the user leaves."""
        stripped = line.strip()
        if not stripped:
            return True
        try:
            return await self._handle(line, stripped)
        except ChatClientError as exc:
            self.error(str(exc))
            return True

    async def _handle(self, line: str, stripped: str) -> bool:
        if stripped.startswith("/") and not stripped.startswith("//"):
            cmd, _, rest = stripped.partition(" ")
            rest = rest.strip()
            if cmd in ("/quit", "/exit"):
                return False
            if cmd == "/to" and rest:
                await self.talk_to(rest)
            elif cmd == "/list":
                await self.refresh_names(rest or "*", show=True)
            elif cmd == "/history":
                self.recent()
            elif cmd == "/outbox":
                self.list_outbox()
            elif cmd == "/give-up":
                self.give_up(rest or "all")
            elif cmd == "/accept-new-key" and (rest or self.peer):
                name = normalize_name(rest or self.peer or "")
                if name is None:
                    self.error(f"invalid user name {rest!r}")
                    return True
                self.local.accept_key(name)
                self.emit({"accepted": name}, f"-- the keys {name} has now will be trusted (pinned again)")
            elif cmd == "/help":
                self.emit({"help": HELP}, HELP)
            else:
                self.error(f"unknown command {cmd!r} ({HELP})")
            return True
        text = line.replace("/", "", 1) if stripped.startswith("//") else line  # as typed
        if self.peer is None:
            self.error("nobody to send to: /to NAME first")
            return True
        self.local.queue(self.peer, text)  # durable before anything is signed; the sender sends it
        self.wake.set()
        return True

    def list_outbox(self) -> None:
        rows = self.local.waiting()
        for row in rows:
            self.emit(outbox_json(row), outbox_text(row))
        if not rows:
            self.emit({"outbox": None}, "-- nothing waiting in the outbox")

    def give_up(self, which: str) -> None:
        rows = {r.id: r for r in self.local.waiting()}
        ids = list(rows) if which == "all" else [int(which)] if which.isdigit() else []
        if not ids or any(i not in rows for i in ids):
            self.error(f"no waiting outbox message {which!r} (/outbox lists them)")
            return
        if self.sending:
            self.error("a delivery attempt is under way; try again in a moment")
            return
        for i in ids:
            state = give_up(self.history, rows[i])
            self.told.discard(i)
            self.emit(outbox_json(rows[i], state), outbox_text(rows[i], state, why="given up"))


async def run_chat(client: ChatClient, local: Local, peer: str | None, out: Out, *, tty: bool) -> int:
    """The chat loop; returns the exit status (0 on /quit or end of input)."""
    show: Callable[[str], None] = lambda text: print(text, flush=True)  # noqa: E731
    chat = ChatSession(client, local, out, show)
    if peer is not None:
        try:
            await chat.talk_to(peer)  # NoSuchUser ends the command before the session starts
        except RejectedError:
            raise
        except ChatClientError as exc:  # no answer now: open anyway, lines wait in the outbox
            name = normalize_name(peer)
            if name is None:
                raise
            chat.peer = name
            chat.error(f"could not look up {name}: {exc}; what you type waits in the outbox for the cluster")
            chat.recent()
    with contextlib.suppress(ChatClientError):  # completion is a convenience
        await chat.refresh_names()
    caught_up = asyncio.Event()
    receiver = asyncio.get_running_loop().create_task(chat.receive(caught_up))
    sender: asyncio.Task[None] | None = None
    try:
        ready = asyncio.get_running_loop().create_task(caught_up.wait())
        await asyncio.wait({ready, receiver}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if receiver.done():
            receiver.result()  # a refusal before the session opened (not our account ...): exit with it
        sender = asyncio.get_running_loop().create_task(chat.sender())  # what earlier runs left, too
        if tty:
            await _prompt_loop(chat)
        else:
            await _line_loop(chat)
        await chat.close(sender)
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
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
        if line is None or not await chat.handle(line.removesuffix("\n").removesuffix("\r")):
            return
