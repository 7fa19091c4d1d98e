"""Event contracts: dlaas's own events and Rucio's hermes messages."""

from dlaas.contracts.base import Did, Event, RequestEvent
from dlaas.contracts.events import (
    EVENT_TYPES,
    CacheMiss,
    CancelRequested,
    FileFailed,
    FileReady,
    FileStaged,
    FileVisible,
    Notification,
    ReadyEntry,
    RequestAccepted,
    RequestCancelled,
    RequestCompleted,
    RequestFailed,
    RequestStatus,
    RuleRequested,
    StatusRequested,
)

__all__ = [
    "EVENT_TYPES",
    "CacheMiss",
    "CancelRequested",
    "Did",
    "Event",
    "FileFailed",
    "FileReady",
    "FileStaged",
    "FileVisible",
    "Notification",
    "ReadyEntry",
    "RequestAccepted",
    "RequestCancelled",
    "RequestCompleted",
    "RequestEvent",
    "RequestFailed",
    "RequestStatus",
    "RuleRequested",
    "StatusRequested",
]
