from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ViewEntry(_message.Message):
    __slots__ = ("view",)
    VIEW_FIELD_NUMBER: _ClassVar[int]
    view: int
    def __init__(self, view: _Optional[int] = ...) -> None: ...

class NewViewEntry(_message.Message):
    __slots__ = ("view", "new_view")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    NEW_VIEW_FIELD_NUMBER: _ClassVar[int]
    view: int
    new_view: bytes
    def __init__(self, view: _Optional[int] = ..., new_view: _Optional[bytes] = ...) -> None: ...

class PrePrepareEntry(_message.Message):
    __slots__ = ("view", "seq", "digest", "envelope", "batch")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    view: int
    seq: int
    digest: bytes
    envelope: bytes
    batch: bytes
    def __init__(self, view: _Optional[int] = ..., seq: _Optional[int] = ..., digest: _Optional[bytes] = ..., envelope: _Optional[bytes] = ..., batch: _Optional[bytes] = ...) -> None: ...

class PreparedEntry(_message.Message):
    __slots__ = ("view", "seq", "digest", "proof")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    view: int
    seq: int
    digest: bytes
    proof: bytes
    def __init__(self, view: _Optional[int] = ..., seq: _Optional[int] = ..., digest: _Optional[bytes] = ..., proof: _Optional[bytes] = ...) -> None: ...

class CommitEntry(_message.Message):
    __slots__ = ("seq", "view", "digest", "proof")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    seq: int
    view: int
    digest: bytes
    proof: bytes
    def __init__(self, seq: _Optional[int] = ..., view: _Optional[int] = ..., digest: _Optional[bytes] = ..., proof: _Optional[bytes] = ...) -> None: ...

class CheckpointEntry(_message.Message):
    __slots__ = ("seq", "state_digest", "snapshot", "proof", "pages", "delta_of")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STATE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    DELTA_OF_FIELD_NUMBER: _ClassVar[int]
    seq: int
    state_digest: bytes
    snapshot: bytes
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    pages: bytes
    delta_of: int
    def __init__(self, seq: _Optional[int] = ..., state_digest: _Optional[bytes] = ..., snapshot: _Optional[bytes] = ..., proof: _Optional[_Iterable[bytes]] = ..., pages: _Optional[bytes] = ..., delta_of: _Optional[int] = ...) -> None: ...

class LogRecord(_message.Message):
    __slots__ = ("replica", "index", "prev_hash", "view", "new_view", "preprepare", "prepared", "commit", "checkpoint")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    NEW_VIEW_FIELD_NUMBER: _ClassVar[int]
    PREPREPARE_FIELD_NUMBER: _ClassVar[int]
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    replica: int
    index: int
    prev_hash: bytes
    view: ViewEntry
    new_view: NewViewEntry
    preprepare: PrePrepareEntry
    prepared: PreparedEntry
    commit: CommitEntry
    checkpoint: CheckpointEntry
    def __init__(self, replica: _Optional[int] = ..., index: _Optional[int] = ..., prev_hash: _Optional[bytes] = ..., view: _Optional[_Union[ViewEntry, _Mapping]] = ..., new_view: _Optional[_Union[NewViewEntry, _Mapping]] = ..., preprepare: _Optional[_Union[PrePrepareEntry, _Mapping]] = ..., prepared: _Optional[_Union[PreparedEntry, _Mapping]] = ..., commit: _Optional[_Union[CommitEntry, _Mapping]] = ..., checkpoint: _Optional[_Union[CheckpointEntry, _Mapping]] = ...) -> None: ...

class LogFrame(_message.Message):
    __slots__ = ("record", "seal")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    SEAL_FIELD_NUMBER: _ClassVar[int]
    record: bytes
    seal: bytes
    def __init__(self, record: _Optional[bytes] = ..., seal: _Optional[bytes] = ...) -> None: ...
