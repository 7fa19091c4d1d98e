"""The services' pure decisions: caches, paths, users, lifetimes, notifications."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from uuid import uuid4

import pytest

from dlaas.contracts import RequestCompleted, RuleRequested
from dlaas.errors import PermanentError
from dlaas_cache_router.domain import cache_url, choose_cache
from dlaas_fuse_agent.domain import mount_path, view_path
from dlaas_notifier.domain import notification_for
from dlaas_stager import domain as stager
from dlaas_stager.ports import FileInfo
from dlaas_stager.settings import StagerOptions

CACHES = [f"root://cache{i}:1094" for i in range(4)]
DIDS = [f"user.alice:f{i}" for i in range(2000)]


def test_the_same_file_always_goes_to_the_same_cache() -> None:
    assert all(
        choose_cache(d, CACHES) == choose_cache(d, list(reversed(CACHES))) for d in DIDS
    )


def test_files_spread_over_caches() -> None:
    counts = Counter(choose_cache(d, CACHES) for d in DIDS)
    assert set(counts) == set(CACHES)
    assert min(counts.values()) > len(DIDS) / len(CACHES) / 2


def test_only_the_files_of_a_cache_that_leaves_move() -> None:
    before = {d: choose_cache(d, CACHES) for d in DIDS}
    after = {d: choose_cache(d, CACHES[:-1]) for d in DIDS}
    moved = [d for d in DIDS if before[d] != after[d]]
    assert all(before[d] == CACHES[-1] for d in moved)


def test_no_cache_means_the_origin() -> None:
    assert choose_cache("s:n", []) is None
    assert cache_url("root://o:1094//data/x", None) == "root://o:1094//data/x"
    assert (
        cache_url("root://o:1094//data/x", "root://c:1095/")
        == "root://c:1095//root://o:1094//data/x"
    )


def test_mount_path_follows_path_begins_at() -> None:
    pfn = "root://xrd1:1094//rucio/test/49/ad/f1.txt"
    assert mount_path(pfn, Path("/eos/rucio"), 1) == Path("/eos/rucio/test/49/ad/f1.txt")
    assert mount_path(pfn, Path("/mnt"), 0) == Path("/mnt/rucio/test/49/ad/f1.txt")


@pytest.mark.parametrize(
    "pfn", ["root://h//data/../../etc/passwd", "root://h//data/./x/..", "root://h//data"]
)
def test_mount_paths_that_escape_are_refused(pfn: str) -> None:
    with pytest.raises(PermanentError):
        mount_path(pfn, Path("/mnt"), 1)


def test_view_path() -> None:
    assert view_path(Path("/v"), "alice", "user.alice:sub/f1") == Path(
        "/v/alice/user.alice/sub/f1"
    )


@pytest.mark.parametrize(
    ("user", "did"),
    [
        ("alice", "s:../bob/x"),
        ("alice", "s:/etc/passwd"),
        ("alice", "..:x"),
        ("..", "s:x"),
        ("alice", "s:a\0b"),
        ("alice", "s:a\\..\\b"),
        ("alice", "s:x/../../y"),
    ],
)
def test_view_paths_that_leave_the_users_view_are_refused(user: str, did: str) -> None:
    with pytest.raises(PermanentError):
        view_path(Path("/v"), user, did)


def _request(user: str = "alice") -> RuleRequested:
    return RuleRequested(request_id=uuid4(), user=user, dids=["s:n"], rse="R")


def test_the_user_is_the_broker_validated_one() -> None:
    stager.check_user(_request(), "alice")
    with pytest.raises(PermanentError, match="published by 'bob'"):
        stager.check_user(_request(), "bob")
    with pytest.raises(PermanentError, match="without a broker-validated"):
        stager.check_user(_request(), None)


def test_accounts_and_lifetimes() -> None:
    options = StagerOptions(
        default_lifetime_days=7, max_lifetime_days=30, accounts={"a@x": "alice"}
    )
    assert stager.account_for("a@x", options) == "alice"
    assert stager.account_for("bob", options) == "bob"
    strict = StagerOptions(accounts={"a@x": "alice"}, unmapped_users="refuse")
    assert stager.account_for("a@x", strict) == "alice"
    with pytest.raises(PermanentError, match="no Rucio account is mapped to 'bob'"):
        stager.account_for("bob", strict)
    assert stager.lifetime_seconds(None, options) == 7 * 86400
    assert stager.lifetime_seconds(365, options) == 30 * 86400


def test_files_of_overlapping_dids_count_once() -> None:
    f1, f2 = FileInfo("s:f1", 1, None), FileInfo("s:f2", 2, None)
    files = stager.unique_files({"s:ds1": [f1, f2], "s:f1": [f1]})
    assert [f.did for f in files] == ["s:f1", "s:f2"]
    assert [f.parent for f in files] == ["s:ds1", "s:ds1"]  # the dataset they came with
    assert stager.unique_files({"s:f1": [f1]})[0].parent is None


def test_completion_is_told_in_words() -> None:
    done = RequestCompleted(
        request_id=uuid4(),
        user="alice",
        files_ready=3,
        files_failed=0,
        bytes_ready=3_000_000,
        duration_s=8.25,
    )
    note = notification_for(done)
    assert note.kind == "completed"
    assert note.text == "3 files ready (3.0 MB), 0 failed, in 8.2 s"
