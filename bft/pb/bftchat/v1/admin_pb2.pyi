from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class AdminRequest(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class FaultCommand(_message.Message):
    __slots__ = ("replica_id", "timestamp_us", "behaviours", "drop_to", "slow_ms", "heal", "crash")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOURS_FIELD_NUMBER: _ClassVar[int]
    DROP_TO_FIELD_NUMBER: _ClassVar[int]
    SLOW_MS_FIELD_NUMBER: _ClassVar[int]
    HEAL_FIELD_NUMBER: _ClassVar[int]
    CRASH_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    timestamp_us: int
    behaviours: _containers.RepeatedScalarFieldContainer[str]
    drop_to: _containers.RepeatedScalarFieldContainer[int]
    slow_ms: int
    heal: bool
    crash: bool
    def __init__(self, replica_id: _Optional[int] = ..., timestamp_us: _Optional[int] = ..., behaviours: _Optional[_Iterable[str]] = ..., drop_to: _Optional[_Iterable[int]] = ..., slow_ms: _Optional[int] = ..., heal: _Optional[bool] = ..., crash: _Optional[bool] = ...) -> None: ...

class AdminReply(_message.Message):
    __slots__ = ("ok", "message", "active")
    OK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    message: str
    active: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ok: _Optional[bool] = ..., message: _Optional[str] = ..., active: _Optional[_Iterable[str]] = ...) -> None: ...
