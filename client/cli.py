"""``bftchat``: the chat command line (usage walkthrough in docs/CLI.md).

    bftchat [--config PATH] [--key PATH] [--data-dir DIR] [--as NAME] [--json] [--timeout S]
            [--insecure] [--transport auto|grpc] [--accept-new-key NAME] COMMAND
        register NAME | list [PATTERN] | send NAME TEXT|- | inbox [--peek] | history NAME
        | outbox [--list] [--give-up ID...|all] | delete-account [--yes] | chat [NAME] | whoami
        | receipt MESSAGE_ID [--of send|register|delete] | verify-receipt FILE

The cluster config comes from ``--config``, else ``$BFTCHAT_CONFIG``, else the first that exists
of ``keys/cluster/config.toml`` (relative to the working directory, where ``bftchat-keygen
cluster`` writes it) and ``~/.config/bftchat/config.toml``. The user key likewise from ``--key``,
``$BFTCHAT_KEY``, ``keys/user.key``, ``~/.config/bftchat/user.key`` (``$XDG_CONFIG_HOME`` is
honoured). "Who I am" is the ``name`` field of the key file, which ``register`` sets (``--as``
overrides it, e.g. for a second account of the same key). The local history lives in the data
directory: ``--data-dir``, else ``$BFTCHAT_DATA_DIR``, else ``$XDG_DATA_HOME/bftchat`` (default
``~/.local/share/bftchat``), as ``<fingerprint>.history.sqlite`` (mode 0600), with the keys pinned
for each peer name and the outbox of messages not known to be delivered (``client.local``). A
store an earlier bftchat kept beside the key file (``<key>.history.sqlite``) keeps being used.

Exit status: 0 success; 1 refused or a local problem (no such user, name taken, key file, config);
2 bad usage; 3 no agreed answer from the cluster (unreachable, replies disagree, or timestamps kept
refused as stale); 130 interrupted.
Errors are one line on stderr (and, with ``--json``, also ``{"error": ..., "message": ...}`` on
stdout); never a traceback for a user error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bft.app.names import normalize_name
from bft.clusterconf import ClusterConfig, ConfigError, load_config
from bft.keys import KeyFileError, UserKey, load_user_key, write_user_key
from bft.version import add_version_argument
from client import receipts
from client.errors import (
    ChatClientError,
    ClusterUnreachable,
    InvalidReceipt,
    NoAgreement,
    NotFound,
    UsageError,
)
from client.history import (
    FAILED,
    PENDING,
    QUEUED,
    UNKNOWN,
    History,
    StoredReceipt,
    history_path,
)
from client.output import (
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

if TYPE_CHECKING:
    from client.chat import ChatClient
    from client.local import Local, Outcome

EXIT_INTERRUPTED = 130


def config_home() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "bftchat"


def default_configs() -> tuple[Path, ...]:
    return (Path("keys/cluster/config.toml"), config_home() / "config.toml")


def default_keys() -> tuple[Path, ...]:
    return (Path("keys/user.key"), config_home() / "user.key")


def _resolve(arg: str | None, env: str, candidates: Sequence[Path], what: str, hint: str) -> Path:
    """The explicit path, else the environment variable, else the first candidate that exists."""
    if arg:
        return Path(arg).expanduser()
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    for c in candidates:
        if c.exists():
            return c
    looked = " and ".join(str(c) for c in candidates)
    raise UsageError(f"no {what}: pass --{what.split()[-1]} PATH or set {env} (looked for {looked}); {hint}")


def kept_error(exc: ChatClientError, what: str) -> ChatClientError:
    """``exc`` (same code and exit status) with what became of the message appended."""
    err = ChatClientError(f"{exc}; {what}")
    err.code, err.exit_code = exc.code, exc.exit_code
    err.__cause__ = exc  # what main() looks at for the likely fix
    return err


def likely_fix(exc: ChatClientError, config: Path | None) -> str:
    """What to check when the cluster gave no agreed answer (empty if there is nothing to suggest):
    whether it runs, and which config this run used (the wrong one is a common cause)."""
    base = exc.__cause__ if isinstance(exc.__cause__, ChatClientError) else exc
    used = f"config used: {config}" if config is not None else "no config loaded"
    if isinstance(base, ClusterUnreachable):
        if base.reachable == 0:
            return f"is the cluster running? ({used}; ./scripts/cluster starts a local one)"
        down = sorted(base.failures)
        who = "the other replicas" if not down else "replicas " + ", ".join(map(str, down))
        return f"are {who} running? ({used})"
    if isinstance(base, NoAgreement):
        return f"retry later; if it persists, check the replicas' logs ({used})"
    return ""


# ---- context -----------------------------------------------------------------------------------


class Ctx:
    """What the commands share: parsed options, output, and lazily loaded key, config, history."""

    def __init__(self, args: argparse.Namespace, out: Out) -> None:
        self.args = args
        self.out = out
        self._key_path: Path | None = None
        self._key: UserKey | None = None
        self._config: ClusterConfig | None = None
        self.config_path: Path | None = None  # once resolved (error messages name it)
        self._history: History | None = None
        self._locals: list[Local] = []

    @property
    def key_path(self) -> Path:
        """Resolved on first use: ``verify-receipt`` needs no key."""
        if self._key_path is None:
            hint = "create one with: bftchat-keygen user --out FILE"
            self._key_path = _resolve(self.args.key, "BFTCHAT_KEY", default_keys(), "user key", hint)
        return self._key_path

    @property
    def key(self) -> UserKey:
        if self._key is None:
            self._key = load_user_key(self.key_path)
        return self._key

    @key.setter
    def key(self, key: UserKey) -> None:
        self._key = key

    @property
    def config(self) -> ClusterConfig:
        if self._config is None:
            hint = "create a cluster with: bftchat-keygen cluster"
            path = _resolve(self.args.config, "BFTCHAT_CONFIG", default_configs(), "cluster config", hint)
            self.config_path = path
            self._config = load_config(path)
        return self._config

    @property
    def account(self) -> str | None:
        raw = self.args.as_ or self.key.name
        if raw is None:
            return None
        name = normalize_name(raw)
        if name is None:
            raise UsageError(f"invalid account name {raw!r}")
        return name

    def me(self) -> str:
        name = self.account
        if name is None:
            raise UsageError(
                f"no account: {self.key_path} names none yet; run `bftchat register NAME` (or pass --as NAME)"
            )
        return name

    def client(self) -> ChatClient:
        from client.chat import ChatClient

        return ChatClient(
            self.config,
            self.key,
            account=self.account,
            insecure=self.args.insecure,
            timeout=self.args.timeout,
            transport=self.args.transport,
        )

    @property
    def history_path(self) -> Path:
        return history_path(self.key_path, self.key.fingerprint(), self.args.data_dir)

    def history(self) -> History:
        if self._history is None:
            self._history = History(self.history_path)
        return self._history

    def local(self, client: ChatClient) -> Local:
        """The local store for this account and cluster (pinned keys, history, outbox)."""
        from client.local import Local

        accept = set()
        for raw in self.args.accept_new_key or ():
            name = normalize_name(raw)
            if name is None:
                raise UsageError(f"invalid user name {raw!r} (--accept-new-key)")
            accept.add(name)
        local = Local(self.history(), client, frozenset(accept))
        self._locals.append(local)
        return local

    def keep_receipt(self, kind: str, name: str, proof: list[bytes]) -> None:
        """Store a register/delete receipt in the local history (under the account it concerns)."""
        if proof and proof[-1]:
            seq = receipts.verify(proof[-1], self.config.info()).seq
            row = StoredReceipt(
                kind, name, None, self.config.cluster_id, seq, time.time_ns() // 1000, proof[-1]
            )
            self.history().add_receipt(name, row)

    def set_key_name(self, name: str | None) -> None:
        """Remember (or forget) the account name in the key file (atomic replace, stays 0600)."""
        if self.key.name != name:
            self.key = dataclasses.replace(self.key, name=name)
            write_user_key(self.key_path, self.key, force=True)

    def close(self) -> None:
        for local in self._locals:
            local.close()
        if self._history is not None:
            self._history.close()


# ---- commands ----------------------------------------------------------------------------------


async def cmd_register(ctx: Ctx) -> int:
    proof: list[bytes] = []
    async with ctx.client() as c:
        name = await c.register(ctx.args.name, receipt=proof)
    ctx.keep_receipt("register", name, proof)
    ctx.set_key_name(name)
    fp = ctx.key.fingerprint()
    ctx.out.emit(
        {"registered": name, "fingerprint": fp},
        f"registered '{name}' (fingerprint {fp}); {ctx.key_path} now acts as '{name}'",
    )
    return 0


async def cmd_list(ctx: Ctx) -> int:
    async with ctx.client() as c:
        async for a in c.accounts(ctx.args.pattern or "*"):
            obj = {
                "name": a.name,
                "fingerprint": a.fingerprint,
                "signing_key": a.signing_key.hex(),
                "box_key": a.box_key.hex(),
            }
            ctx.out.emit(obj, f"{a.name:<32} {a.fingerprint}")
    return 0


def _read_text(arg: str) -> str:
    if arg != "-":
        return arg
    data = sys.stdin.buffer.read()
    text = data.decode("utf-8", errors="replace")
    return text[:-1] if text.endswith("\n") else text


async def cmd_send(ctx: Ctx) -> int:
    """Queue the message in the outbox, then deliver the outbox in order: earlier waiting messages
    of this account first (each reported on stderr), then this one."""
    ctx.me()
    peer = normalize_name(ctx.args.name)
    if peer is None:
        raise UsageError(f"invalid user name {ctx.args.name!r}")
    text = _read_text(ctx.args.text)
    if not text:
        raise UsageError("empty message")
    from client.e2e import MAX_PLAINTEXT

    if len(text.encode()) > MAX_PLAINTEXT:
        raise UsageError(f"message too long: {len(text.encode())} bytes, at most {MAX_PLAINTEXT}")
    c = ctx.client()
    try:
        try:
            await c.connect()
        except ClusterUnreachable as exc:  # kept all the same, signed if it can be, sent later
            raise kept_error(exc, _keep_unsent(ctx.local(c), peer, text)) from exc
        local = ctx.local(c)
        row_id = local.queue(peer, text)
        mine: list[Outcome] = []

        def report(o: Outcome) -> None:
            if o.row.id == row_id:
                mine.append(o)
            else:
                ctx.out.note(outbox_text(o.row, o.state, o.sent, str(o.error or "")))

        stuck = await local.deliver(report)
    finally:
        await c.close()
    if not mine:  # an earlier message got no agreed answer: this one waits behind it, unsent
        assert stuck is not None and stuck.error is not None
        what = (
            f"not sent: this message is queued in the outbox (#{row_id}) behind an earlier one "
            "that is still pending; bftchat resends them with the next send, chat or `bftchat outbox`"
        )
        raise kept_error(stuck.error, what)
    o = mine[0]
    if o.state == SENT and o.sent is not None:
        sent = o.sent
        obj = {"to": sent.recipient, "id": sent.id, "seq": sent.seq, "timestamp_us": sent.timestamp_us}
        ctx.out.emit(obj, f"sent to {sent.recipient} (message {sent.id})")
        return 0
    assert o.error is not None
    if o.state == WAITING:
        state = (local.store.outbox_row(row_id) or o.row).state
        what = (
            f"the message was not delivered yet: it is kept in the outbox (#{row_id}, {state}) and resent "
            "by the next bftchat send, chat or `bftchat outbox` (`bftchat outbox --give-up "
            f"{row_id}` stops that)"
        )
        raise kept_error(o.error, what)
    raise o.error


def _keep_unsent(local: Local, peer: str, text: str) -> str:
    """With the cluster unreachable: queue the message and sign it at once to the recipient's pinned
    keys (pending: those exact bytes are resent later, never re-signed); what the error line adds."""
    row_id = local.queue(peer, text)
    state = local.sign_unsent(row_id)
    later = "the next bftchat send, chat or `bftchat outbox`"
    if state == PENDING:
        return (
            f"not sent: the message is signed and kept in the outbox (#{row_id}, pending); {later} "
            f"resends it as is, never re-signed (`bftchat outbox --give-up {row_id}` stops that)"
        )
    if state == QUEUED:
        return (
            f"not sent: the message is kept in the outbox (#{row_id}, queued: {peer}'s keys are looked up "
            f"first); {later} sends it (`bftchat outbox --give-up {row_id}` drops it)"
        )
    return f"not sent: the message is kept in the outbox (#{row_id}); another bftchat with this key sends it"


async def cmd_inbox(ctx: Ctx) -> int:
    ctx.me()
    async with ctx.client() as c:
        local = ctx.local(c)
        messages = await c.inbox()
        for m in messages:
            changed = local.record_in(m)  # durably stored before anything is acknowledged
            ctx.out.emit(message_json(m, changed), message_text(m, key_changed=changed))
            if changed:
                ctx.out.note(key_changed_note(m.sender))
        if messages and not ctx.args.peek:
            await c.ack(messages[-1].id)
    if not messages:
        ctx.out.note("no new messages")
    return 0


async def cmd_history(ctx: Ctx) -> int:
    me = ctx.me()
    peer = normalize_name(ctx.args.name)
    if peer is None:
        raise UsageError(f"invalid user name {ctx.args.name!r}")
    entries = ctx.history().conversation(me, peer, ctx.args.limit)
    for obj, text in history_lines(me, entries):
        if obj:
            ctx.out.emit(obj, text)
        elif not ctx.out.json:  # a key change (JSON entries carry peer_key instead)
            print(text, flush=True)
    if not entries:
        ctx.out.note(f"no messages with {peer} in {ctx.history_path}")
    return 0


def _confirm(question: str) -> bool:
    print(question, end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


async def cmd_delete(ctx: Ctx) -> int:
    me = ctx.me()
    if not ctx.args.yes and not _confirm(
        f"Delete account '{me}'? Its undelivered messages are dropped and the name becomes free. [y/N] "
    ):
        raise UsageError("not deleted (not confirmed; --yes skips the question)")
    proof: list[bytes] = []
    async with ctx.client() as c:
        dropped = await c.delete_account(receipt=proof)
    ctx.keep_receipt("delete", me, proof)
    if ctx.key.name == me:
        ctx.set_key_name(None)
    text = f"deleted '{me}' ({dropped} undelivered messages dropped)"
    ctx.out.emit({"deleted": me, "dropped": dropped}, text)
    return 0


async def cmd_whoami(ctx: Ctx) -> int:
    obj = {
        "account": ctx.account,
        "fingerprint": ctx.key.fingerprint(),
        "signing_key": ctx.key.signing_public.hex(),
        "key_file": str(ctx.key_path),
        "history": str(ctx.history_path),
    }
    none = "(none: run bftchat register NAME)"
    text = "\n".join(f"{k:<12} {v if v is not None else none}" for k, v in obj.items())
    ctx.out.emit(obj, text)
    return 0


async def cmd_outbox(ctx: Ctx) -> int:
    """Deliver (or with --list just show) this account's outbox; --give-up stops sending rows."""
    me = ctx.me()
    store = ctx.history()
    if ctx.args.give_up:
        rows = {r.id: r for r in store.outbox(me)}
        wanted = list(rows) if ctx.args.give_up == ["all"] else []
        for raw in ctx.args.give_up if not wanted else ():
            if not raw.isdigit() or int(raw) not in rows:
                raise UsageError(
                    f"no queued or pending outbox message #{raw} of '{me}' (bftchat outbox --list)"
                )
            wanted.append(int(raw))
        from client.local import give_up

        for row_id in wanted:
            state = give_up(store, rows[row_id])
            ctx.out.emit(outbox_json(rows[row_id], state), outbox_text(rows[row_id], state, why="given up"))
        return 0
    if not ctx.args.list:
        async with ctx.client() as c:
            local = ctx.local(c)

            def report(o: Outcome) -> None:
                ctx.out.emit(
                    outbox_json(o.row, o.state, o.sent),
                    outbox_text(o.row, o.state, o.sent, str(o.error or "")),
                )

            stuck = await local.deliver(report)
        if stuck is not None:
            ctx.out.note(f"no agreed answer from the cluster; outbox #{stuck.row.id} and later stay waiting")
    listed = store.outbox(me, states=(QUEUED, PENDING, UNKNOWN, FAILED))
    if ctx.args.list:
        for row in listed:
            ctx.out.emit(outbox_json(row), outbox_text(row))
    waiting = sum(r.state in (QUEUED, PENDING) for r in listed)
    ctx.out.note(
        f"{waiting} message(s) waiting in the outbox" if waiting else "nothing waiting in the outbox"
    )
    return 3 if waiting and not ctx.args.list else 0


async def cmd_receipt(ctx: Ctx) -> int:
    """Print a stored receipt: of a send by message id, or with --of register/delete by name."""
    kind, ident = ctx.args.of, ctx.args.id
    cluster = ctx.config.info()
    if kind == "send":
        try:
            message_id = int(ident)
        except ValueError:
            raise UsageError(f"not a message id: {ident!r} (--of register|delete takes a name)") from None
        stored = ctx.history().receipt(ctx.me(), kind, cluster.cluster_id, message_id=message_id)
        account = ctx.me()
    else:
        account = normalize_name(ident) or ident
        stored = ctx.history().receipt(account, kind, cluster.cluster_id, name=account)
    if stored is None:
        what = f"message {ident}" if kind == "send" else f"{kind} of '{ident}'"
        raise NotFound(
            f"no receipt of {what} on this cluster in {ctx.history_path} "
            "(receipts are kept from this version of bftchat on)"
        )
    try:
        v = receipts.verify(stored.receipt, cluster)
    except receipts.ReceiptError as exc:
        raise ChatClientError(f"the stored receipt does not verify against this config: {exc}") from None
    extra: dict[str, Any] = {"kind": stored.kind, "account": account, "name": stored.name}
    if stored.message_id is not None:
        extra["message_id"] = stored.message_id
    signers = ", ".join(map(str, v.signers))
    what = f"message {stored.message_id} to {stored.name}" if kind == "send" else f"{kind} of '{stored.name}'"
    text = (
        f"receipt of {what}: committed at sequence number {v.seq} (view {v.view}), batch root "
        f"{v.root.hex()}, signed by replicas {signers} ({len(v.signers)} of {cluster.n}, "
        f"{cluster.quorums.f + 1} needed)"
    )
    ctx.out.emit(receipts.to_json(v, stored.receipt, **extra), text)
    return 0


async def cmd_verify_receipt(ctx: Ctx) -> int:
    """Check a receipt file offline against the config's public keys (no key file, no network)."""
    path = Path(ctx.args.file)
    with path.open("rb") as fh:
        content = fh.read(receipts.MAX_RECEIPT * 3)
    cluster = ctx.config.info()
    try:
        data, doc = receipts.from_file(content)
        v = receipts.verify(data, cluster)
        if doc is not None:
            receipts.check_stated(v, doc, data)
    except receipts.ReceiptError as exc:
        raise InvalidReceipt(f"{path}: invalid receipt: {exc}") from None
    signers = ", ".join(map(str, v.signers))
    text = (
        f"valid: committed at sequence number {v.seq} (view {v.view}) by cluster {v.cluster_id.hex()[:16]}, "
        f"signed by replicas {signers} ({len(v.signers)} of {cluster.n}, {cluster.quorums.f + 1} needed)"
    )
    ctx.out.emit({"valid": True, **receipts.to_json(v, data)}, text)
    return 0


async def cmd_chat(ctx: Ctx) -> int:
    from client.chat_ui import run_chat

    ctx.me()
    tty = sys.stdin.isatty() and sys.stdout.isatty() and not ctx.out.json
    async with ctx.client() as c:
        return await run_chat(c, ctx.local(c), ctx.args.name, ctx.out, tty=tty)


# ---- parser ------------------------------------------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """The global options, accepted before or after the command (after it, unset ones keep the
    values given before it)."""

    def d(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    p.add_argument(
        "--config",
        metavar="PATH",
        default=d(None),
        help="cluster config (default: $BFTCHAT_CONFIG, else the first that exists of "
        "keys/cluster/config.toml and ~/.config/bftchat/config.toml; $XDG_CONFIG_HOME is honoured)",
    )
    p.add_argument(
        "--key",
        metavar="PATH",
        default=d(None),
        help="user key file (default: $BFTCHAT_KEY, else the first that exists of keys/user.key and "
        "~/.config/bftchat/user.key; $XDG_CONFIG_HOME is honoured)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        default=d(None),
        help="where the local history lives (default: $BFTCHAT_DATA_DIR, else $XDG_DATA_HOME/bftchat, "
        "else ~/.local/share/bftchat)",
    )
    p.add_argument("--as", dest="as_", metavar="NAME", default=d(None), help="act as this account of the key")
    p.add_argument("--json", action="store_true", default=d(False), help="one JSON object per line")
    p.add_argument(
        "--timeout", type=_positive, metavar="SECONDS", default=d(15.0), help="per operation (default 15)"
    )
    p.add_argument(
        "--insecure", action="store_true", default=d(False), help="no TLS (replicas run --insecure)"
    )
    p.add_argument(
        "--transport",
        choices=("auto", "grpc"),
        default=d("auto"),
        help="auto: the replicas' session ports where the config has them, else gRPC; grpc: always "
        "the gRPC port (default auto)",
    )
    p.add_argument(
        "--accept-new-key",
        action="append",
        metavar="NAME",
        default=d(None),
        help="trust NAME's keys although they differ from the ones pinned when you first talked",
    )


Command = Callable[[Ctx], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bftchat", description="End-to-end encrypted chat on a Byzantine-fault-tolerant cluster."
    )
    add_version_argument(parser)
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, run: Command, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(run=run)
        return p

    add("register", cmd_register, "register an account name for this key").add_argument(
        "name", help="the account name"
    )
    add("list", cmd_list, "list accounts (PATTERN: * any run, ? one character)").add_argument(
        "pattern", nargs="?", default="*", help="names to list (default %(default)s: all)"
    )
    p = add("send", cmd_send, "send an end-to-end encrypted message")
    p.add_argument("name", help="recipient")
    p.add_argument("text", help="the message; - reads it from stdin")
    add("inbox", cmd_inbox, "print and acknowledge undelivered messages, oldest first").add_argument(
        "--peek", action="store_true", help="print but do not acknowledge"
    )
    p = add("history", cmd_history, "print the local history of a conversation")
    p.add_argument("name", help="the other party")
    p.add_argument("--limit", type=int, default=50, help="last N messages (default %(default)s)")
    add("delete-account", cmd_delete, "delete this account (asks first)").add_argument(
        "--yes", action="store_true", help="do not ask for confirmation"
    )
    add("chat", cmd_chat, "interactive chat (plain line mode when stdin is not a terminal)").add_argument(
        "name", nargs="?", help="whom to talk to first"
    )
    p = add(
        "outbox", cmd_outbox, "send the messages waiting in the outbox (or list them, or give up on them)"
    )
    p.add_argument("--list", action="store_true", help="only list the outbox (no network)")
    p.add_argument(
        "--give-up", nargs="+", metavar="ID", help="stop sending these outbox messages ('all': every one)"
    )
    add("whoami", cmd_whoami, "show this key's account, fingerprint and files")
    p = add("receipt", cmd_receipt, "print the stored receipt of a send (or register/delete)")
    p.add_argument(
        "id", metavar="MESSAGE_ID", help="a sent message's id (with --of register|delete: the name)"
    )
    p.add_argument(
        "--of",
        choices=("send", "register", "delete"),
        default="send",
        help="the operation the receipt is for (default send)",
    )
    p = add(
        "verify-receipt", cmd_verify_receipt, "check a receipt offline: exit 0 only if f+1 replicas signed it"
    )
    p.add_argument("file", metavar="FILE", help="a receipt (`bftchat receipt ID --json` output, or raw)")
    return parser


# ---- main --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # gRPC's own logging would break the one-line rule
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or bad usage (2): argparse printed the message
        return int(e.code) if isinstance(e.code, int) else 2
    out = Out(args.json)
    ctx: Ctx | None = None
    try:
        ctx = Ctx(args, out)
        run: Command = args.run
        return asyncio.run(run(ctx))
    except ChatClientError as e:
        fix = likely_fix(e, ctx.config_path if ctx is not None else None)
        return out.fail(e.code, f"{e}; {fix}" if fix else str(e), e.exit_code)
    except KeyFileError as e:
        return out.fail("key_file", str(e), 1)
    except ConfigError as e:
        return out.fail("config", str(e), 1)
    except sqlite3.Error as e:
        return out.fail("history", f"local history: {e}", 1)
    except BrokenPipeError:
        with open(os.devnull, "w") as devnull:  # reader went away (e.g. `| head`): exit quietly
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return out.fail("os", f"{where}{e.strerror or e}", 1)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug: still one line, with a way to see more
        if os.environ.get("BFTCHAT_DEBUG"):
            raise
        text = f"unexpected {type(e).__name__}: {e} (BFTCHAT_DEBUG=1 shows a traceback)"
        return out.fail("internal", text, 1)
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":
    sys.exit(main())
