from bft.pb.bftchat.v1 import protocol_pb2 as _protocol_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LinkUp(_message.Message):
    __slots__ = ("hello", "messages")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    hello: LinkHello
    messages: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, hello: _Optional[_Union[LinkHello, _Mapping]] = ..., messages: _Optional[_Iterable[bytes]] = ...) -> None: ...

class LinkDown(_message.Message):
    __slots__ = ("nonce", "error", "accepted")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    error: str
    accepted: bool
    def __init__(self, nonce: _Optional[bytes] = ..., error: _Optional[str] = ..., accepted: _Optional[bool] = ...) -> None: ...

class LinkHello(_message.Message):
    __slots__ = ("proof",)
    PROOF_FIELD_NUMBER: _ClassVar[int]
    proof: _protocol_pb2.Envelope
    def __init__(self, proof: _Optional[_Union[_protocol_pb2.Envelope, _Mapping]] = ...) -> None: ...

class LinkHelloBody(_message.Message):
    __slots__ = ("from_replica", "to_replica", "nonce")
    FROM_REPLICA_FIELD_NUMBER: _ClassVar[int]
    TO_REPLICA_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    from_replica: int
    to_replica: int
    nonce: bytes
    def __init__(self, from_replica: _Optional[int] = ..., to_replica: _Optional[int] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class ClientFrame(_message.Message):
    __slots__ = ("request", "auth", "claim")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    request: bytes
    auth: AuthProof
    claim: SessionClaim
    def __init__(self, request: _Optional[bytes] = ..., auth: _Optional[_Union[AuthProof, _Mapping]] = ..., claim: _Optional[_Union[SessionClaim, _Mapping]] = ...) -> None: ...

class SessionClaim(_message.Message):
    __slots__ = ("public_key", "session", "signature")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    session: int
    signature: bytes
    def __init__(self, public_key: _Optional[bytes] = ..., session: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SessionClaimed(_message.Message):
    __slots__ = ("public_key", "session", "view")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    session: int
    view: int
    def __init__(self, public_key: _Optional[bytes] = ..., session: _Optional[int] = ..., view: _Optional[int] = ...) -> None: ...

class AuthProof(_message.Message):
    __slots__ = ("public_key", "signature")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    signature: bytes
    def __init__(self, public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ServerFrame(_message.Message):
    __slots__ = ("reply", "push", "error", "nonce", "subscribed", "auth_error", "claimed", "claim_error", "refused")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    AUTH_ERROR_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_FIELD_NUMBER: _ClassVar[int]
    CLAIM_ERROR_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    reply: bytes
    push: _protocol_pb2.Envelope
    error: RequestError
    nonce: bytes
    subscribed: bytes
    auth_error: str
    claimed: SessionClaimed
    claim_error: str
    refused: str
    def __init__(self, reply: _Optional[bytes] = ..., push: _Optional[_Union[_protocol_pb2.Envelope, _Mapping]] = ..., error: _Optional[_Union[RequestError, _Mapping]] = ..., nonce: _Optional[bytes] = ..., subscribed: _Optional[bytes] = ..., auth_error: _Optional[str] = ..., claimed: _Optional[_Union[SessionClaimed, _Mapping]] = ..., claim_error: _Optional[str] = ..., refused: _Optional[str] = ...) -> None: ...

class RequestError(_message.Message):
    __slots__ = ("request_digest", "message", "min_timestamp")
    REQUEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MIN_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    request_digest: bytes
    message: str
    min_timestamp: int
    def __init__(self, request_digest: _Optional[bytes] = ..., message: _Optional[str] = ..., min_timestamp: _Optional[int] = ...) -> None: ...

class Push(_message.Message):
    __slots__ = ("recipient_key", "recipient", "message_id", "seq")
    RECIPIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    recipient_key: bytes
    recipient: str
    message_id: int
    seq: int
    def __init__(self, recipient_key: _Optional[bytes] = ..., recipient: _Optional[str] = ..., message_id: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("replica_id", "view", "primary", "view_changing", "last_executed", "stable_checkpoint", "state_digest", "recovering", "peers_connected", "log_bytes", "cluster_id", "faults", "accused", "epoch")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    VIEW_CHANGING_FIELD_NUMBER: _ClassVar[int]
    LAST_EXECUTED_FIELD_NUMBER: _ClassVar[int]
    STABLE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    STATE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    RECOVERING_FIELD_NUMBER: _ClassVar[int]
    PEERS_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    ACCUSED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    view: int
    primary: int
    view_changing: bool
    last_executed: int
    stable_checkpoint: int
    state_digest: bytes
    recovering: bool
    peers_connected: int
    log_bytes: int
    cluster_id: bytes
    faults: _containers.RepeatedScalarFieldContainer[str]
    accused: _containers.RepeatedScalarFieldContainer[int]
    epoch: int
    def __init__(self, replica_id: _Optional[int] = ..., view: _Optional[int] = ..., primary: _Optional[int] = ..., view_changing: _Optional[bool] = ..., last_executed: _Optional[int] = ..., stable_checkpoint: _Optional[int] = ..., state_digest: _Optional[bytes] = ..., recovering: _Optional[bool] = ..., peers_connected: _Optional[int] = ..., log_bytes: _Optional[int] = ..., cluster_id: _Optional[bytes] = ..., faults: _Optional[_Iterable[str]] = ..., accused: _Optional[_Iterable[int]] = ..., epoch: _Optional[int] = ...) -> None: ...
