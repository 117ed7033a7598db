from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplyStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLY_OK: _ClassVar[ReplyStatus]
    REPLY_STALE_TIMESTAMP: _ClassVar[ReplyStatus]
    REPLY_INVALID_REQUEST: _ClassVar[ReplyStatus]
REPLY_OK: ReplyStatus
REPLY_STALE_TIMESTAMP: ReplyStatus
REPLY_INVALID_REQUEST: ReplyStatus

class Envelope(_message.Message):
    __slots__ = ("body", "signer", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signer: int
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signer: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class PeerMessage(_message.Message):
    __slots__ = ("envelope", "batch", "batch_reply", "state_chunk", "request", "commit_proof")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_REPLY_FIELD_NUMBER: _ClassVar[int]
    STATE_CHUNK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    COMMIT_PROOF_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    batch: bytes
    batch_reply: BatchReply
    state_chunk: StateChunk
    request: bytes
    commit_proof: CommitProof
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., batch: _Optional[bytes] = ..., batch_reply: _Optional[_Union[BatchReply, _Mapping]] = ..., state_chunk: _Optional[_Union[StateChunk, _Mapping]] = ..., request: _Optional[bytes] = ..., commit_proof: _Optional[_Union[CommitProof, _Mapping]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[PeerMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[PeerMessage, _Mapping]]] = ...) -> None: ...

class RequestBody(_message.Message):
    __slots__ = ("session", "timestamp", "op", "read_only", "min_seq")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    MIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    session: int
    timestamp: int
    op: bytes
    read_only: bool
    min_seq: int
    def __init__(self, session: _Optional[int] = ..., timestamp: _Optional[int] = ..., op: _Optional[bytes] = ..., read_only: _Optional[bool] = ..., min_seq: _Optional[int] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("timestamp_us", "requests")
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    timestamp_us: int
    requests: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, timestamp_us: _Optional[int] = ..., requests: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PrePrepare(_message.Message):
    __slots__ = ("view", "seq", "digest")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    view: int
    seq: int
    digest: bytes
    def __init__(self, view: _Optional[int] = ..., seq: _Optional[int] = ..., digest: _Optional[bytes] = ...) -> None: ...

class Prepare(_message.Message):
    __slots__ = ("view", "seq", "digest")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    view: int
    seq: int
    digest: bytes
    def __init__(self, view: _Optional[int] = ..., seq: _Optional[int] = ..., digest: _Optional[bytes] = ...) -> None: ...

class Commit(_message.Message):
    __slots__ = ("view", "seq", "digest")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    view: int
    seq: int
    digest: bytes
    def __init__(self, view: _Optional[int] = ..., seq: _Optional[int] = ..., digest: _Optional[bytes] = ...) -> None: ...

class ReplyRoot(_message.Message):
    __slots__ = ("view", "seq", "root")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    view: int
    seq: int
    root: bytes
    def __init__(self, view: _Optional[int] = ..., seq: _Optional[int] = ..., root: _Optional[bytes] = ...) -> None: ...

class ClientReply(_message.Message):
    __slots__ = ("root", "session", "timestamp", "result", "index", "path", "client_key", "status")
    ROOT_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    root: Envelope
    session: int
    timestamp: int
    result: bytes
    index: int
    path: _containers.RepeatedScalarFieldContainer[bytes]
    client_key: bytes
    status: int
    def __init__(self, root: _Optional[_Union[Envelope, _Mapping]] = ..., session: _Optional[int] = ..., timestamp: _Optional[int] = ..., result: _Optional[bytes] = ..., index: _Optional[int] = ..., path: _Optional[_Iterable[bytes]] = ..., client_key: _Optional[bytes] = ..., status: _Optional[int] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("version", "cluster_id", "client_key", "session", "timestamp", "replies")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    version: int
    cluster_id: bytes
    client_key: bytes
    session: int
    timestamp: int
    replies: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, version: _Optional[int] = ..., cluster_id: _Optional[bytes] = ..., client_key: _Optional[bytes] = ..., session: _Optional[int] = ..., timestamp: _Optional[int] = ..., replies: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ClientEntry(_message.Message):
    __slots__ = ("client_key", "session", "last_timestamp", "last_seq", "status", "result")
    CLIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    LAST_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    client_key: bytes
    session: int
    last_timestamp: int
    last_seq: int
    status: int
    result: bytes
    def __init__(self, client_key: _Optional[bytes] = ..., session: _Optional[int] = ..., last_timestamp: _Optional[int] = ..., last_seq: _Optional[int] = ..., status: _Optional[int] = ..., result: _Optional[bytes] = ...) -> None: ...

class ReplicaEpoch(_message.Message):
    __slots__ = ("replica", "epoch")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    replica: int
    epoch: int
    def __init__(self, replica: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class ClientTableSnapshot(_message.Message):
    __slots__ = ("entries", "floor", "epochs")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    FLOOR_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[ClientEntry]
    floor: int
    epochs: _containers.RepeatedCompositeFieldContainer[ReplicaEpoch]
    def __init__(self, entries: _Optional[_Iterable[_Union[ClientEntry, _Mapping]]] = ..., floor: _Optional[int] = ..., epochs: _Optional[_Iterable[_Union[ReplicaEpoch, _Mapping]]] = ...) -> None: ...

class StateSnapshot(_message.Message):
    __slots__ = ("seq", "last_timestamp_us", "app", "clients")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    last_timestamp_us: int
    app: bytes
    clients: ClientTableSnapshot
    def __init__(self, seq: _Optional[int] = ..., last_timestamp_us: _Optional[int] = ..., app: _Optional[bytes] = ..., clients: _Optional[_Union[ClientTableSnapshot, _Mapping]] = ...) -> None: ...

class StatePage(_message.Message):
    __slots__ = ("seq", "last_timestamp_us", "clients", "app")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    seq: int
    last_timestamp_us: int
    clients: bytes
    app: bytes
    def __init__(self, seq: _Optional[int] = ..., last_timestamp_us: _Optional[int] = ..., clients: _Optional[bytes] = ..., app: _Optional[bytes] = ...) -> None: ...

class StatePages(_message.Message):
    __slots__ = ("pages", "indexes")
    PAGES_FIELD_NUMBER: _ClassVar[int]
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    pages: _containers.RepeatedScalarFieldContainer[bytes]
    indexes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, pages: _Optional[_Iterable[bytes]] = ..., indexes: _Optional[_Iterable[int]] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("seq", "state_digest")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STATE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    seq: int
    state_digest: bytes
    def __init__(self, seq: _Optional[int] = ..., state_digest: _Optional[bytes] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("view", "view_changing", "last_executed", "stable_seq", "recovering", "recovery_target")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    VIEW_CHANGING_FIELD_NUMBER: _ClassVar[int]
    LAST_EXECUTED_FIELD_NUMBER: _ClassVar[int]
    STABLE_SEQ_FIELD_NUMBER: _ClassVar[int]
    RECOVERING_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_TARGET_FIELD_NUMBER: _ClassVar[int]
    view: int
    view_changing: bool
    last_executed: int
    stable_seq: int
    recovering: bool
    recovery_target: int
    def __init__(self, view: _Optional[int] = ..., view_changing: _Optional[bool] = ..., last_executed: _Optional[int] = ..., stable_seq: _Optional[int] = ..., recovering: _Optional[bool] = ..., recovery_target: _Optional[int] = ...) -> None: ...

class CommitProof(_message.Message):
    __slots__ = ("preprepare", "batch", "commits")
    PREPREPARE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    preprepare: Envelope
    batch: bytes
    commits: _containers.RepeatedCompositeFieldContainer[Envelope]
    def __init__(self, preprepare: _Optional[_Union[Envelope, _Mapping]] = ..., batch: _Optional[bytes] = ..., commits: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ...) -> None: ...

class PreparedProof(_message.Message):
    __slots__ = ("preprepare", "prepares")
    PREPREPARE_FIELD_NUMBER: _ClassVar[int]
    PREPARES_FIELD_NUMBER: _ClassVar[int]
    preprepare: Envelope
    prepares: _containers.RepeatedCompositeFieldContainer[Envelope]
    def __init__(self, preprepare: _Optional[_Union[Envelope, _Mapping]] = ..., prepares: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ...) -> None: ...

class ViewChange(_message.Message):
    __slots__ = ("new_view", "stable_seq", "stable_digest", "checkpoint_proof", "prepared", "epoch")
    NEW_VIEW_FIELD_NUMBER: _ClassVar[int]
    STABLE_SEQ_FIELD_NUMBER: _ClassVar[int]
    STABLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PROOF_FIELD_NUMBER: _ClassVar[int]
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    new_view: int
    stable_seq: int
    stable_digest: bytes
    checkpoint_proof: _containers.RepeatedCompositeFieldContainer[Envelope]
    prepared: _containers.RepeatedCompositeFieldContainer[PreparedProof]
    epoch: int
    def __init__(self, new_view: _Optional[int] = ..., stable_seq: _Optional[int] = ..., stable_digest: _Optional[bytes] = ..., checkpoint_proof: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ..., prepared: _Optional[_Iterable[_Union[PreparedProof, _Mapping]]] = ..., epoch: _Optional[int] = ...) -> None: ...

class NewView(_message.Message):
    __slots__ = ("view", "view_changes", "preprepares")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    VIEW_CHANGES_FIELD_NUMBER: _ClassVar[int]
    PREPREPARES_FIELD_NUMBER: _ClassVar[int]
    view: int
    view_changes: _containers.RepeatedCompositeFieldContainer[Envelope]
    preprepares: _containers.RepeatedCompositeFieldContainer[Envelope]
    def __init__(self, view: _Optional[int] = ..., view_changes: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ..., preprepares: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ...) -> None: ...

class Fetch(_message.Message):
    __slots__ = ("batch_digest", "preprepare", "state")
    BATCH_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PREPREPARE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    batch_digest: bytes
    preprepare: FetchPrePrepare
    state: FetchState
    def __init__(self, batch_digest: _Optional[bytes] = ..., preprepare: _Optional[_Union[FetchPrePrepare, _Mapping]] = ..., state: _Optional[_Union[FetchState, _Mapping]] = ...) -> None: ...

class FetchState(_message.Message):
    __slots__ = ("seq", "digest", "first", "count", "part", "hashes", "end")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    seq: int
    digest: bytes
    first: int
    count: int
    part: int
    hashes: bool
    end: int
    def __init__(self, seq: _Optional[int] = ..., digest: _Optional[bytes] = ..., first: _Optional[int] = ..., count: _Optional[int] = ..., part: _Optional[int] = ..., hashes: _Optional[bool] = ..., end: _Optional[int] = ...) -> None: ...

class FetchPrePrepare(_message.Message):
    __slots__ = ("view", "seq")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    view: int
    seq: int
    def __init__(self, view: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class BatchReply(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: bytes
    def __init__(self, batch: _Optional[bytes] = ...) -> None: ...

class StateChunk(_message.Message):
    __slots__ = ("seq", "index", "data", "state_digest", "chunk_root", "path", "level", "pages", "part", "parts", "page_bytes", "part_path", "page_count", "page_hashes", "last")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    STATE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ROOT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PART_PATH_FIELD_NUMBER: _ClassVar[int]
    PAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAGE_HASHES_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    seq: int
    index: int
    data: bytes
    state_digest: bytes
    chunk_root: bytes
    path: _containers.RepeatedScalarFieldContainer[bytes]
    level: int
    pages: _containers.RepeatedScalarFieldContainer[bytes]
    part: int
    parts: int
    page_bytes: int
    part_path: _containers.RepeatedScalarFieldContainer[bytes]
    page_count: int
    page_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    last: bool
    def __init__(self, seq: _Optional[int] = ..., index: _Optional[int] = ..., data: _Optional[bytes] = ..., state_digest: _Optional[bytes] = ..., chunk_root: _Optional[bytes] = ..., path: _Optional[_Iterable[bytes]] = ..., level: _Optional[int] = ..., pages: _Optional[_Iterable[bytes]] = ..., part: _Optional[int] = ..., parts: _Optional[int] = ..., page_bytes: _Optional[int] = ..., part_path: _Optional[_Iterable[bytes]] = ..., page_count: _Optional[int] = ..., page_hashes: _Optional[_Iterable[bytes]] = ..., last: _Optional[bool] = ...) -> None: ...
