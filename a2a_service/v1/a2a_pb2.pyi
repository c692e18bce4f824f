from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecordKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECORD_KIND_UNSPECIFIED: _ClassVar[RecordKind]
    ROUTED: _ClassVar[RecordKind]
    COMPLETED: _ClassVar[RecordKind]
RECORD_KIND_UNSPECIFIED: RecordKind
ROUTED: RecordKind
COMPLETED: RecordKind

class SendMessageRequest(_message.Message):
    __slots__ = ("workflow_id", "source_agent", "target_agent", "message_type", "payload", "ttl_seconds")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_AGENT_FIELD_NUMBER: _ClassVar[int]
    TARGET_AGENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    source_agent: str
    target_agent: str
    message_type: str
    payload: bytes
    ttl_seconds: float
    def __init__(self, workflow_id: _Optional[str] = ..., source_agent: _Optional[str] = ..., target_agent: _Optional[str] = ..., message_type: _Optional[str] = ..., payload: _Optional[bytes] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class SendMessageResponse(_message.Message):
    __slots__ = ("message_id", "delivered_to", "created_at", "expires_at")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_TO_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    delivered_to: _containers.RepeatedScalarFieldContainer[str]
    created_at: float
    expires_at: float
    def __init__(self, message_id: _Optional[str] = ..., delivered_to: _Optional[_Iterable[str]] = ..., created_at: _Optional[float] = ..., expires_at: _Optional[float] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("message_id", "workflow_id", "source_agent", "target_agent", "message_type", "payload", "created_at", "expires_at", "delivery_count", "lease_expires_at")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_AGENT_FIELD_NUMBER: _ClassVar[int]
    TARGET_AGENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_COUNT_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    workflow_id: str
    source_agent: str
    target_agent: str
    message_type: str
    payload: bytes
    created_at: float
    expires_at: float
    delivery_count: int
    lease_expires_at: float
    def __init__(self, message_id: _Optional[str] = ..., workflow_id: _Optional[str] = ..., source_agent: _Optional[str] = ..., target_agent: _Optional[str] = ..., message_type: _Optional[str] = ..., payload: _Optional[bytes] = ..., created_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., delivery_count: _Optional[int] = ..., lease_expires_at: _Optional[float] = ...) -> None: ...

class ReceiveMessagesRequest(_message.Message):
    __slots__ = ("workflow_id", "agent_id", "timeout_seconds", "max_messages", "ack", "visibility_timeout_seconds")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    agent_id: str
    timeout_seconds: float
    max_messages: int
    ack: bool
    visibility_timeout_seconds: float
    def __init__(self, workflow_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., timeout_seconds: _Optional[float] = ..., max_messages: _Optional[int] = ..., ack: _Optional[bool] = ..., visibility_timeout_seconds: _Optional[float] = ...) -> None: ...

class ReceiveMessagesResponse(_message.Message):
    __slots__ = ("messages", "has_more")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    has_more: bool
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("workflow_id", "agent_id", "max_messages", "ack", "visibility_timeout_seconds")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    agent_id: str
    max_messages: int
    ack: bool
    visibility_timeout_seconds: float
    def __init__(self, workflow_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., max_messages: _Optional[int] = ..., ack: _Optional[bool] = ..., visibility_timeout_seconds: _Optional[float] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ...) -> None: ...

class AckMessagesRequest(_message.Message):
    __slots__ = ("workflow_id", "agent_id", "message_ids")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    agent_id: str
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, workflow_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AckMessagesResponse(_message.Message):
    __slots__ = ("acked", "not_found")
    ACKED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    acked: _containers.RepeatedScalarFieldContainer[str]
    not_found: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, acked: _Optional[_Iterable[str]] = ..., not_found: _Optional[_Iterable[str]] = ...) -> None: ...

class GetWorkflowStatusRequest(_message.Message):
    __slots__ = ("workflow_id",)
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    def __init__(self, workflow_id: _Optional[str] = ...) -> None: ...

class QueueStatus(_message.Message):
    __slots__ = ("queued", "in_flight")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    queued: int
    in_flight: int
    def __init__(self, queued: _Optional[int] = ..., in_flight: _Optional[int] = ...) -> None: ...

class MessageCounters(_message.Message):
    __slots__ = ("sent", "delivered", "acked", "redelivered", "expired", "rejected", "dropped")
    SENT_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    REDELIVERED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    sent: int
    delivered: int
    acked: int
    redelivered: int
    expired: int
    rejected: int
    dropped: int
    def __init__(self, sent: _Optional[int] = ..., delivered: _Optional[int] = ..., acked: _Optional[int] = ..., redelivered: _Optional[int] = ..., expired: _Optional[int] = ..., rejected: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class WorkflowStatus(_message.Message):
    __slots__ = ("workflow_id", "active_agents", "agents", "total_requests", "affinity_hits", "affinity_hit_rate", "failovers", "completed_requests", "failed_requests", "cache_hits", "cache_hit_rate", "prompt_tokens", "cached_tokens", "avg_routing_latency_seconds", "assigned_instance", "created_at", "last_updated", "queued_messages", "in_flight_messages", "queues", "messages", "cached_token_rate", "model_instances", "identity_source")
    class QueuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: QueueStatus
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[QueueStatus, _Mapping]] = ...) -> None: ...
    class ModelInstancesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_AGENTS_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_HITS_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    FAILOVERS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    AVG_ROUTING_LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKEN_RATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    active_agents: int
    agents: _containers.RepeatedScalarFieldContainer[str]
    total_requests: int
    affinity_hits: int
    affinity_hit_rate: float
    failovers: int
    completed_requests: int
    failed_requests: int
    cache_hits: int
    cache_hit_rate: float
    prompt_tokens: int
    cached_tokens: int
    avg_routing_latency_seconds: float
    assigned_instance: str
    created_at: float
    last_updated: float
    queued_messages: int
    in_flight_messages: int
    queues: _containers.MessageMap[str, QueueStatus]
    messages: MessageCounters
    cached_token_rate: float
    model_instances: _containers.ScalarMap[str, str]
    identity_source: str
    def __init__(self, workflow_id: _Optional[str] = ..., active_agents: _Optional[int] = ..., agents: _Optional[_Iterable[str]] = ..., total_requests: _Optional[int] = ..., affinity_hits: _Optional[int] = ..., affinity_hit_rate: _Optional[float] = ..., failovers: _Optional[int] = ..., completed_requests: _Optional[int] = ..., failed_requests: _Optional[int] = ..., cache_hits: _Optional[int] = ..., cache_hit_rate: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., avg_routing_latency_seconds: _Optional[float] = ..., assigned_instance: _Optional[str] = ..., created_at: _Optional[float] = ..., last_updated: _Optional[float] = ..., queued_messages: _Optional[int] = ..., in_flight_messages: _Optional[int] = ..., queues: _Optional[_Mapping[str, QueueStatus]] = ..., messages: _Optional[_Union[MessageCounters, _Mapping]] = ..., cached_token_rate: _Optional[float] = ..., model_instances: _Optional[_Mapping[str, str]] = ..., identity_source: _Optional[str] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SystemStats(_message.Message):
    __slots__ = ("active_workflows", "max_workflows", "workflows_created", "workflows_expired", "workflows_deleted", "total_requests", "affinity_hits", "affinity_hit_rate", "completed_requests", "cache_hits", "cache_hit_rate", "prompt_tokens", "cached_tokens", "records_rejected", "queues", "queued_messages", "in_flight_messages", "messages", "rejected_by_code", "uptime_seconds", "cached_token_rate")
    class RejectedByCodeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ACTIVE_WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    MAX_WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    WORKFLOWS_CREATED_FIELD_NUMBER: _ClassVar[int]
    WORKFLOWS_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    WORKFLOWS_DELETED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_HITS_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    QUEUED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_BY_CODE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKEN_RATE_FIELD_NUMBER: _ClassVar[int]
    active_workflows: int
    max_workflows: int
    workflows_created: int
    workflows_expired: int
    workflows_deleted: int
    total_requests: int
    affinity_hits: int
    affinity_hit_rate: float
    completed_requests: int
    cache_hits: int
    cache_hit_rate: float
    prompt_tokens: int
    cached_tokens: int
    records_rejected: int
    queues: int
    queued_messages: int
    in_flight_messages: int
    messages: MessageCounters
    rejected_by_code: _containers.ScalarMap[str, int]
    uptime_seconds: float
    cached_token_rate: float
    def __init__(self, active_workflows: _Optional[int] = ..., max_workflows: _Optional[int] = ..., workflows_created: _Optional[int] = ..., workflows_expired: _Optional[int] = ..., workflows_deleted: _Optional[int] = ..., total_requests: _Optional[int] = ..., affinity_hits: _Optional[int] = ..., affinity_hit_rate: _Optional[float] = ..., completed_requests: _Optional[int] = ..., cache_hits: _Optional[int] = ..., cache_hit_rate: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., records_rejected: _Optional[int] = ..., queues: _Optional[int] = ..., queued_messages: _Optional[int] = ..., in_flight_messages: _Optional[int] = ..., messages: _Optional[_Union[MessageCounters, _Mapping]] = ..., rejected_by_code: _Optional[_Mapping[str, int]] = ..., uptime_seconds: _Optional[float] = ..., cached_token_rate: _Optional[float] = ...) -> None: ...

class DeleteWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id",)
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    def __init__(self, workflow_id: _Optional[str] = ...) -> None: ...

class DeleteWorkflowResponse(_message.Message):
    __slots__ = ("workflow_id", "dropped_messages")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    DROPPED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    dropped_messages: int
    def __init__(self, workflow_id: _Optional[str] = ..., dropped_messages: _Optional[int] = ...) -> None: ...

class RequestRecord(_message.Message):
    __slots__ = ("request_id", "workflow_id", "agent_id", "instance", "affinity_hit", "failover", "routing_latency_seconds", "timestamp", "kind", "prompt_tokens", "cached_tokens", "status_code", "model", "identity_source")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_HIT_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_FIELD_NUMBER: _ClassVar[int]
    ROUTING_LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    workflow_id: str
    agent_id: str
    instance: str
    affinity_hit: bool
    failover: bool
    routing_latency_seconds: float
    timestamp: float
    kind: RecordKind
    prompt_tokens: int
    cached_tokens: int
    status_code: int
    model: str
    identity_source: str
    def __init__(self, request_id: _Optional[str] = ..., workflow_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., instance: _Optional[str] = ..., affinity_hit: _Optional[bool] = ..., failover: _Optional[bool] = ..., routing_latency_seconds: _Optional[float] = ..., timestamp: _Optional[float] = ..., kind: _Optional[_Union[RecordKind, str]] = ..., prompt_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., status_code: _Optional[int] = ..., model: _Optional[str] = ..., identity_source: _Optional[str] = ...) -> None: ...

class RecordRequestsRequest(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[RequestRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[RequestRecord, _Mapping]]] = ...) -> None: ...

class RecordRequestsResponse(_message.Message):
    __slots__ = ("accepted", "rejected")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: int
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...
