"""Prometheus metrics every service shares (labels are low-cardinality by design)."""

from prometheus_client import Counter, Histogram

MESSAGES = Counter(
    "dlaas_messages_total",
    "Messages consumed, by queue, type and outcome (ok, ignored, retried, dead_lettered)",
    ["queue", "type", "outcome"],
)
PUBLISHED = Counter("dlaas_published_total", "Events published, by type", ["type"])
HANDLER_SECONDS = Histogram(
    "dlaas_handler_seconds",
    "Time spent handling one message",
    ["queue", "type"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EXTERNAL_CALLS = Counter(
    "dlaas_external_calls_total",
    "Calls to Rucio, XRootD, FUSE",
    ["system", "call", "outcome"],
)
