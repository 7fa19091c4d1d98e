"""What a log line may carry: credentials never, whatever a caller bound."""

from __future__ import annotations

from typing import Any

from dlaas.logging import _redact


def test_credentials_are_redacted_whatever_their_case_or_place_in_the_key() -> None:
    line: dict[str, Any] = {
        "password": "p",
        "X-Rucio-Auth-Token": "t",
        "client_secret": "s",
        "Authorization": "Bearer x",
        "x509_proxy": "/tmp/x509up",
        "Cookie": "c",
        "did": "user.alice:f",
        "user": "alice",
        "request_id": "r",
    }
    out = _redact(None, "info", line)
    assert {k for k, v in out.items() if v == "***"} == {
        "password", "X-Rucio-Auth-Token", "client_secret", "Authorization",
        "x509_proxy", "Cookie",
    }  # fmt: skip
    assert (out["did"], out["user"], out["request_id"]) == ("user.alice:f", "alice", "r")
