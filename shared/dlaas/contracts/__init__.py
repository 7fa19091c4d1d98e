"""Event contracts: dlaas's own events and Rucio's hermes messages."""

from dlaas.contracts.base import Did, Event, RequestEvent
from dlaas.contracts.events import (
    EVENT_TYPES,
    CacheMiss,
    FileFailed,
    FileReady,
    FileStaged,
    FileVisible,
    Notification,
    RequestAccepted,
    RequestCompleted,
    RequestFailed,
    RuleRequested,
)

__all__ = [
    "EVENT_TYPES",
    "CacheMiss",
    "Did",
    "Event",
    "FileFailed",
    "FileReady",
    "FileStaged",
    "FileVisible",
    "Notification",
    "RequestAccepted",
    "RequestCompleted",
    "RequestEvent",
    "RequestFailed",
    "RuleRequested",
]
