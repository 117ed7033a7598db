from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChatOp(_message.Message):
    __slots__ = ("register", "list", "send", "fetch", "ack", "delete")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    FETCH_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    register: ChatRegister
    list: ChatList
    send: ChatSend
    fetch: ChatFetch
    ack: ChatAck
    delete: ChatDelete
    def __init__(self, register: _Optional[_Union[ChatRegister, _Mapping]] = ..., list: _Optional[_Union[ChatList, _Mapping]] = ..., send: _Optional[_Union[ChatSend, _Mapping]] = ..., fetch: _Optional[_Union[ChatFetch, _Mapping]] = ..., ack: _Optional[_Union[ChatAck, _Mapping]] = ..., delete: _Optional[_Union[ChatDelete, _Mapping]] = ...) -> None: ...

class ChatRegister(_message.Message):
    __slots__ = ("name", "box_key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BOX_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    box_key: bytes
    def __init__(self, name: _Optional[str] = ..., box_key: _Optional[bytes] = ...) -> None: ...

class ChatList(_message.Message):
    __slots__ = ("pattern", "limit", "after")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    limit: int
    after: str
    def __init__(self, pattern: _Optional[str] = ..., limit: _Optional[int] = ..., after: _Optional[str] = ...) -> None: ...

class ChatSend(_message.Message):
    __slots__ = ("sender", "recipient", "recipient_box_key", "sender_box_key", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_BOX_KEY_FIELD_NUMBER: _ClassVar[int]
    SENDER_BOX_KEY_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: str
    recipient: str
    recipient_box_key: bytes
    sender_box_key: bytes
    ciphertext: bytes
    def __init__(self, sender: _Optional[str] = ..., recipient: _Optional[str] = ..., recipient_box_key: _Optional[bytes] = ..., sender_box_key: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ChatFetch(_message.Message):
    __slots__ = ("account", "after_id", "limit")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    account: str
    after_id: int
    limit: int
    def __init__(self, account: _Optional[str] = ..., after_id: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ChatAck(_message.Message):
    __slots__ = ("account", "up_to_id")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    UP_TO_ID_FIELD_NUMBER: _ClassVar[int]
    account: str
    up_to_id: int
    def __init__(self, account: _Optional[str] = ..., up_to_id: _Optional[int] = ...) -> None: ...

class ChatDelete(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: str
    def __init__(self, account: _Optional[str] = ...) -> None: ...

class ChatResult(_message.Message):
    __slots__ = ("error", "registered", "accounts", "sent", "messages", "acked", "deleted")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    error: ChatError
    registered: ChatRegistered
    accounts: ChatAccountList
    sent: ChatSent
    messages: ChatMessages
    acked: ChatAcked
    deleted: ChatDeleted
    def __init__(self, error: _Optional[_Union[ChatError, _Mapping]] = ..., registered: _Optional[_Union[ChatRegistered, _Mapping]] = ..., accounts: _Optional[_Union[ChatAccountList, _Mapping]] = ..., sent: _Optional[_Union[ChatSent, _Mapping]] = ..., messages: _Optional[_Union[ChatMessages, _Mapping]] = ..., acked: _Optional[_Union[ChatAcked, _Mapping]] = ..., deleted: _Optional[_Union[ChatDeleted, _Mapping]] = ...) -> None: ...

class ChatError(_message.Message):
    __slots__ = ("code", "message")
    class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CODE_UNSPECIFIED: _ClassVar[ChatError.Code]
        MALFORMED: _ClassVar[ChatError.Code]
        OP_TOO_LARGE: _ClassVar[ChatError.Code]
        READ_ONLY: _ClassVar[ChatError.Code]
        INVALID_NAME: _ClassVar[ChatError.Code]
        INVALID_PATTERN: _ClassVar[ChatError.Code]
        INVALID_KEY: _ClassVar[ChatError.Code]
        NAME_TAKEN: _ClassVar[ChatError.Code]
        TOO_MANY_ACCOUNTS: _ClassVar[ChatError.Code]
        NO_SUCH_ACCOUNT: _ClassVar[ChatError.Code]
        NOT_OWNER: _ClassVar[ChatError.Code]
        NO_SUCH_RECIPIENT: _ClassVar[ChatError.Code]
        RECIPIENT_KEY_MISMATCH: _ClassVar[ChatError.Code]
        SENDER_KEY_MISMATCH: _ClassVar[ChatError.Code]
        BODY_TOO_LARGE: _ClassVar[ChatError.Code]
        BODY_TOO_SMALL: _ClassVar[ChatError.Code]
        INBOX_FULL: _ClassVar[ChatError.Code]
        RATE_LIMITED: _ClassVar[ChatError.Code]
        QUOTA_EXCEEDED: _ClassVar[ChatError.Code]
        STATE_FULL: _ClassVar[ChatError.Code]
    CODE_UNSPECIFIED: ChatError.Code
    MALFORMED: ChatError.Code
    OP_TOO_LARGE: ChatError.Code
    READ_ONLY: ChatError.Code
    INVALID_NAME: ChatError.Code
    INVALID_PATTERN: ChatError.Code
    INVALID_KEY: ChatError.Code
    NAME_TAKEN: ChatError.Code
    TOO_MANY_ACCOUNTS: ChatError.Code
    NO_SUCH_ACCOUNT: ChatError.Code
    NOT_OWNER: ChatError.Code
    NO_SUCH_RECIPIENT: ChatError.Code
    RECIPIENT_KEY_MISMATCH: ChatError.Code
    SENDER_KEY_MISMATCH: ChatError.Code
    BODY_TOO_LARGE: ChatError.Code
    BODY_TOO_SMALL: ChatError.Code
    INBOX_FULL: ChatError.Code
    RATE_LIMITED: ChatError.Code
    QUOTA_EXCEEDED: ChatError.Code
    STATE_FULL: ChatError.Code
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: ChatError.Code
    message: str
    def __init__(self, code: _Optional[_Union[ChatError.Code, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ChatRegistered(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ChatAccountInfo(_message.Message):
    __slots__ = ("name", "signing_key", "box_key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    BOX_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    signing_key: bytes
    box_key: bytes
    def __init__(self, name: _Optional[str] = ..., signing_key: _Optional[bytes] = ..., box_key: _Optional[bytes] = ...) -> None: ...

class ChatAccountList(_message.Message):
    __slots__ = ("accounts", "next_after")
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[ChatAccountInfo]
    next_after: str
    def __init__(self, accounts: _Optional[_Iterable[_Union[ChatAccountInfo, _Mapping]]] = ..., next_after: _Optional[str] = ...) -> None: ...

class ChatSent(_message.Message):
    __slots__ = ("id", "seq", "timestamp_us")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    id: int
    seq: int
    timestamp_us: int
    def __init__(self, id: _Optional[int] = ..., seq: _Optional[int] = ..., timestamp_us: _Optional[int] = ...) -> None: ...

class ChatDelivered(_message.Message):
    __slots__ = ("id", "seq", "timestamp_us", "signed", "signature")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    id: int
    seq: int
    timestamp_us: int
    signed: bytes
    signature: bytes
    def __init__(self, id: _Optional[int] = ..., seq: _Optional[int] = ..., timestamp_us: _Optional[int] = ..., signed: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ChatMessages(_message.Message):
    __slots__ = ("messages", "more", "pending")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatDelivered]
    more: bool
    pending: int
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatDelivered, _Mapping]]] = ..., more: _Optional[bool] = ..., pending: _Optional[int] = ...) -> None: ...

class ChatAcked(_message.Message):
    __slots__ = ("removed", "remaining")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    removed: int
    remaining: int
    def __init__(self, removed: _Optional[int] = ..., remaining: _Optional[int] = ...) -> None: ...

class ChatDeleted(_message.Message):
    __slots__ = ("name", "dropped")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    name: str
    dropped: int
    def __init__(self, name: _Optional[str] = ..., dropped: _Optional[int] = ...) -> None: ...

class ChatSnapshot(_message.Message):
    __slots__ = ("version", "next_id", "accounts", "messages")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NEXT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    version: int
    next_id: int
    accounts: _containers.RepeatedCompositeFieldContainer[ChatAccountRecord]
    messages: _containers.RepeatedCompositeFieldContainer[ChatFiledMessage]
    def __init__(self, version: _Optional[int] = ..., next_id: _Optional[int] = ..., accounts: _Optional[_Iterable[_Union[ChatAccountRecord, _Mapping]]] = ..., messages: _Optional[_Iterable[_Union[ChatFiledMessage, _Mapping]]] = ...) -> None: ...

class ChatFiledMessage(_message.Message):
    __slots__ = ("recipient", "message")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    message: ChatDelivered
    def __init__(self, recipient: _Optional[str] = ..., message: _Optional[_Union[ChatDelivered, _Mapping]] = ...) -> None: ...

class ChatAccountRecord(_message.Message):
    __slots__ = ("name", "signing_key", "box_key", "inbox", "created_us")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    BOX_KEY_FIELD_NUMBER: _ClassVar[int]
    INBOX_FIELD_NUMBER: _ClassVar[int]
    CREATED_US_FIELD_NUMBER: _ClassVar[int]
    name: str
    signing_key: bytes
    box_key: bytes
    inbox: _containers.RepeatedCompositeFieldContainer[ChatDelivered]
    created_us: int
    def __init__(self, name: _Optional[str] = ..., signing_key: _Optional[bytes] = ..., box_key: _Optional[bytes] = ..., inbox: _Optional[_Iterable[_Union[ChatDelivered, _Mapping]]] = ..., created_us: _Optional[int] = ...) -> None: ...
