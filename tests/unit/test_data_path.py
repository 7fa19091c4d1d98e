"""The data path's pure parts: routing over live caches, warm budgets, pfc records, mounts."""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from dlaas.bus.consumer import Delivery
from dlaas.contracts import CacheMiss
from dlaas.errors import PermanentError, TransientError
from dlaas_cache_router.adapters.pfc import parse_misses
from dlaas_cache_router.datasets import Budget, Datasets, RoutedFile
from dlaas_cache_router.domain import choose_cache, lfn_path, route, site_for
from dlaas_cache_router.health import HealthBook
from dlaas_cache_router.ports import Miss, ReadResult
from dlaas_cache_router.settings import (
    CacheOptions,
    CacheRouterSettings,
    CacheSite,
    WarmOptions,
)
from dlaas_cache_router.warming import Warmer
from dlaas_fuse_agent import blocking
from dlaas_fuse_agent.app import watch_mounts
from dlaas_fuse_agent.domain import (
    MountHealth,
    RemountPolicy,
    after_check,
    probe_target,
    user_view,
    view_path,
)
from dlaas_fuse_agent.settings import FuseOptions, MountSpec

CACHES = [f"root://cache{i}:1094" for i in range(4)]
DIDS = [f"user.alice:f{i}" for i in range(2000)]
PFN = "root://origin:1094//data/notebook/f1"
SITE = CacheSite(name="site", caches=CACHES)


# --- routing ------------------------------------------------------------------------------


def _alive_except(*dead: str):
    return lambda cache: cache not in dead


def test_a_file_goes_to_its_cache_in_forwarding_form() -> None:
    chosen = route("s:f1", PFN, SITE, _alive_except())
    assert chosen.cache == choose_cache("s:f1", CACHES)
    assert chosen.url == f"{chosen.cache}//{PFN}"


def test_a_dead_cache_sends_its_files_to_their_second_choice_only() -> None:
    before = {d: route(d, PFN, SITE, _alive_except()).cache for d in DIDS}
    after = {d: route(d, PFN, SITE, _alive_except(CACHES[1])).cache for d in DIDS}
    moved = {d for d in DIDS if before[d] != after[d]}
    assert moved == {d for d in DIDS if before[d] == CACHES[1]}
    assert CACHES[1] not in after.values()
    assert all(after[d] == choose_cache(d, CACHES[:1] + CACHES[2:]) for d in moved)
    spread = Counter(after[d] for d in moved)
    assert len(spread) == 3, "the dead cache's files spread over the others"


def test_no_live_cache_means_the_origin() -> None:
    chosen = route("s:f1", PFN, SITE, _alive_except(*CACHES))
    assert (chosen.cache, chosen.url) == (None, PFN)
    assert route("s:f1", PFN, None, _alive_except()).url == PFN


def test_a_direct_cache_serves_only_its_origin() -> None:
    direct = {"url": "root://c9:1095", "origin": "root://origin:1094"}
    site = CacheSite(name="d", caches=[direct])
    assert (
        route("s:f", PFN, site, _alive_except()).url == "root://c9:1095//data/notebook/f1"
    )
    other = "root://elsewhere:1094//data/x"
    assert route("s:f", other, site, _alive_except()).url == other


def test_sites_by_rse() -> None:
    options = CacheOptions.model_validate(
        {
            "endpoints": ["root://default:1"],
            "sites": [{"name": "cern", "rses": ["CERN_DISK"], "caches": ["root://c:1"]}],
        }
    )
    sites = options.all_sites()
    assert site_for("CERN_DISK", sites).name == "cern"  # type: ignore[union-attr]
    assert site_for("NOTEBOOK", sites).name == "default"  # type: ignore[union-attr]
    assert site_for("X", CacheOptions().all_sites()) is None


def test_caches_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLAAS_CACHE__ENDPOINTS", '["root://a:1", "root://b:2"]')
    monkeypatch.setenv("DLAAS_CACHE__PROBE__INTERVAL_S", "5")
    monkeypatch.setenv("DLAAS_CACHE__MONITOR__UDP_PORT", "9931")
    cache = CacheRouterSettings().cache
    assert [c.url for c in cache.endpoints] == ["root://a:1", "root://b:2"]
    assert all(c.origin is None for c in cache.endpoints)
    assert (cache.probe.interval_s, cache.monitor.udp_port) == (5, 9931)


@pytest.mark.parametrize(
    "text",
    [
        "/data/x/f1",
        "//data/x/f1",
        "root://o:1094//data/x/f1",
        "root://c:1095//root://o:1094//data/x/f1",
        "/root://o:1094//data/x/f1",
        "roots://o//data//x/f1",
    ],
)
def test_storage_paths_are_normalised(text: str) -> None:
    assert lfn_path(text) == "/data/x/f1"


def test_health_needs_failures_in_a_row_and_one_success_revives() -> None:
    book = HealthBook(failures_to_dead=2)
    assert book.alive("c")
    assert book.record("c", ok=False, reason="down") is None
    assert book.alive("c")
    assert book.record("c", ok=True) is None
    assert book.record("c", ok=False) is None
    assert book.record("c", ok=False, reason="refused") == "died"
    assert not book.alive("c")
    assert book.dead() == {"c": "refused"}
    assert book.record("c", ok=False) is None
    assert book.record("c", ok=True) == "revived"
    assert book.alive("c")
    assert book.dead() == {}


# --- datasets and the warm budget ------------------------------------------------------------


def _file(i: int, size: int = 100) -> RoutedFile:
    return RoutedFile(
        f"s:f{i}", f"/data/f{i}", f"root://c//root://o//data/f{i}", size, None
    )


def _datasets(n: int, key: str = "r1") -> Datasets:
    datasets = Datasets(remember_s=100, max_files=1000)
    for i in range(n):
        datasets.remember(key, _file(i), now=0)
    return datasets


def test_a_miss_plans_the_other_files_of_its_dataset() -> None:
    plan = _datasets(3).plan_warm("/data/f0", Budget(10, 10**6, 60), now=1)
    assert plan is not None
    assert [f.did for f in plan.files] == ["s:f1", "s:f2"]
    assert plan.skipped == 0


def test_the_budget_caps_files_and_bytes_per_window() -> None:
    datasets = _datasets(5)
    budget = Budget(files=2, bytes=10**6, window_s=60)
    first = datasets.plan_warm("/data/f0", budget, now=1)
    assert first is not None
    assert ([f.did for f in first.files], first.skipped) == (["s:f1", "s:f2"], 2)
    again = datasets.plan_warm("/data/f1", budget, now=2)
    assert again is not None
    assert (again.files, again.skipped) == ((), 2)
    later = datasets.plan_warm("/data/f1", budget, now=62)  # a new window
    assert later is not None
    assert [f.did for f in later.files] == ["s:f0", "s:f2"]
    by_bytes = _datasets(3).plan_warm("/data/f0", Budget(10, 150, 60), now=1)
    assert by_bytes is not None
    assert (len(by_bytes.files), by_bytes.skipped) == (1, 1)


def test_a_failed_warm_gives_its_budget_back() -> None:
    datasets = _datasets(2)
    budget = Budget(files=1, bytes=10**6, window_s=60)
    plan = datasets.plan_warm("/data/f0", budget, now=1)
    assert plan is not None
    datasets.warm_failed(plan, plan.files[0])
    retry = datasets.plan_warm("/data/f0", budget, now=2)
    assert retry is not None
    assert [f.did for f in retry.files] == ["s:f1"]


def test_unknown_files_and_forgetting() -> None:
    datasets = Datasets(remember_s=10, max_files=3)
    assert datasets.plan_warm("/nope", Budget(1, 1, 1), now=0) is None
    for i in range(3):
        datasets.remember("old", _file(i), now=0)
    datasets.remember("new", _file(9), now=1)  # 4 files > 3: the oldest dataset goes
    assert datasets.dataset_of("/data/f0") is None
    assert datasets.dataset_of("/data/f9") == "new"
    datasets.remember("newer", _file(8), now=20)  # "new" expired
    assert datasets.dataset_of("/data/f9") is None
    datasets.remember("newest", _file(8), now=21)
    assert datasets.dataset_of("/data/f8") == "newest"


class FakeCaches:
    """A recorder for the CacheClient port."""

    def __init__(
        self, failing: Mapping[str, Exception] | None = None, adler: str = ""
    ) -> None:
        self.failing = dict(failing or {})
        self.adler = adler
        self.read_urls: list[str] = []

    async def probe(self, cache: str, timeout_s: float) -> str | None:
        return None

    async def read(self, url: str, timeout_s: float) -> ReadResult:
        self.read_urls.append(url)
        if url in self.failing:
            raise self.failing[url]
        return ReadResult(100, self.adler or "00000001")

    async def close(self) -> None:
        return None


def _delivery(attempt: int = 1) -> Delivery:
    return Delivery("cache_router.misses", attempt, 3, None, None, None, None)


async def test_the_warmer_reads_siblings_and_retries_transient_failures() -> None:
    datasets = _datasets(3)
    failing = {_file(2).url: TransientError("down"), _file(1).url: PermanentError("gone")}
    caches = FakeCaches(failing)
    warmer = Warmer(datasets, caches, WarmOptions(max_files=10), clock=lambda: 5)
    miss = CacheMiss(cache="c:1", lfn="/data/f0")
    with pytest.raises(TransientError, match="1 files not warmed"):
        await warmer.on_cache_miss(miss, _delivery())
    assert sorted(caches.read_urls) == [_file(1).url, _file(2).url]
    caches.failing.clear()
    await warmer.on_cache_miss(miss, _delivery(2))  # only the transient one again
    assert caches.read_urls[2:] == [_file(2).url]
    await warmer.on_cache_miss(CacheMiss(cache="c:1", lfn="/else"), _delivery())


async def test_a_warm_read_with_a_wrong_checksum_is_reported() -> None:
    datasets = Datasets(100, 100)
    for i in range(2):
        file = _file(i)
        datasets.remember("r", RoutedFile(file.did, file.path, file.url, 1, "0abc"), 0)
    warmer = Warmer(datasets, FakeCaches(adler="0000dead"), WarmOptions())
    with capture_logs() as logs:
        await warmer.on_cache_miss(CacheMiss(cache="c", lfn="/data/f0"), _delivery())
    bad = [e for e in logs if e["event"] == "warm_checksum_mismatch"]
    assert bad
    assert bad[0]["expected"] == "0abc"
    assert bad[0]["read"] == "0000dead"


# --- the pfc monitoring stream -------------------------------------------------------------

HEADER = {"code": "g", "src": {"host": "vm", "port": 57335}, "gs": {"type": "C"}}


def _record(lfn: str, remotes: list[str], b_miss: int = 0) -> dict[str, object]:
    return {"event": "file_close", "lfn": lfn, "remotes": remotes, "b_miss": b_miss}


def _datagram(*records: dict[str, object]) -> bytes:
    """As a cache sends it: header, one record per line, a NUL at the end."""
    lines = [json.dumps(HEADER), *(json.dumps(r) for r in records)]
    return "\n".join(lines).encode() + b"\0"


def test_misses_are_records_with_remotes() -> None:
    data = _datagram(
        _record("/data/notebook/f0.bin", ["127.0.0.1:1094"], b_miss=7),
        _record("/data/notebook/f1.bin", []),
        _record("/root://o:1//data/notebook/f2.bin", ["o:1"]),
    )
    misses = parse_misses(data)
    assert [(m.cache, m.path, m.bytes_missed) for m in misses] == [
        ("vm:57335", "/data/notebook/f0.bin", 7),
        ("vm:57335", "/data/notebook/f2.bin", 0),
    ]
    one_per_datagram = [parse_misses(_datagram(r)) for r in (_record("/a", ["o"]),)]
    assert one_per_datagram == [[Miss("vm:57335", "/a", 0)]]


def test_identification_and_garbage_give_no_miss() -> None:
    ident = b'{"code":"=","pseq":1,"src":{"host":"vm","port":1}}\x00'
    assert parse_misses(ident) == []
    assert parse_misses(b"\xff\xfenot json\x00{]\x00") == []
    assert parse_misses(_datagram({"event": "file_close", "remotes": ["o"]})) == []


# --- mounts -------------------------------------------------------------------------------

POLICY = RemountPolicy(failures_to_remount=2, backoff_s=1, max_backoff_s=4)


def test_a_gone_mount_is_remounted_at_once_a_failing_one_after_two_checks() -> None:
    health = MountHealth()
    assert after_check(health, ok=False, gone=True, now=0, policy=POLICY)
    health = MountHealth()
    assert not after_check(health, ok=False, gone=False, now=0, policy=POLICY)
    assert after_check(health, ok=False, gone=False, now=0, policy=POLICY, reason="x")
    assert (health.healthy, health.reason) == (False, "x")


def test_remounts_back_off_and_success_resets() -> None:
    health = MountHealth()
    times = [t / 2 for t in range(40)]
    remounts = [
        t for t in times if after_check(health, ok=False, gone=True, now=t, policy=POLICY)
    ]
    assert remounts[:5] == [0, 1, 3, 7, 11]  # waits of 1, 2, 4, then capped at 4
    assert not after_check(health, ok=True, gone=False, now=20, policy=POLICY)
    assert health.healthy
    assert health.remounts == 0
    assert after_check(health, ok=False, gone=True, now=20.5, policy=POLICY)


def test_probe_targets_stay_inside_the_mount() -> None:
    assert probe_target(Path("/m"), "") == Path("/m")
    assert probe_target(Path("/m"), "sub/file") == Path("/m/sub/file")
    for bad in ("../etc", "/etc", "a/../../b", "a\0b"):
        with pytest.raises(PermanentError):
            probe_target(Path("/m"), bad)
        with pytest.raises(ValidationError):
            MountSpec(
                rse="R", mount_path=Path("/m"), source="root://o//d", probe_path=bad
            )


@pytest.mark.parametrize(
    ("user", "did"),
    [
        ("alice", "s:../.."),
        ("alice", "s:a/./b"),
        ("alice", "s:a\nb"),
        ("alice", "s:a\x7fb"),
        ("alice", "s:"),
        ("alice", "s"),
        ("alice", ":name"),
        ("alice/bob", "s:x"),
        ("", "s:x"),
        ("alice", "s/../..:x"),
    ],
)
def test_more_did_tricks_are_refused(user: str, did: str) -> None:
    with pytest.raises(PermanentError):
        view_path(Path("/v"), user, did)


async def test_a_user_view_is_one_directory_and_plain_mounts_are_not_managed(
    tmp_path: Path,
) -> None:
    assert user_view(Path("/v"), "alice") == Path("/v/alice")
    with pytest.raises(PermanentError):
        user_view(Path("/v"), "..")
    options = FuseOptions(mounts=[MountSpec(rse="R", mount_path=tmp_path)])
    assert await watch_mounts(options) == {}


async def test_a_stuck_call_is_abandoned_after_its_timeout() -> None:
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stuck() -> int:
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        return 1

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await blocking.call(stuck, 0.1)
    assert time.monotonic() - started < 1
    assert await blocking.call(lambda: 2, 1) == 2  # the stuck worker blocks nobody
    release.set()
    with pytest.raises(ZeroDivisionError):
        await blocking.call(lambda: 1 // 0, 1)
    await asyncio.sleep(0.05)  # the abandoned thread settles into a done future: ignored


async def test_grouped_calls_of_one_moment_share_a_thread_and_a_stuck_one_holds_back_none_after() -> (
    None
):
    grouped = blocking.Grouped()
    threads: set[int] = set()

    def work(n: int) -> int:
        threads.add(threading.get_ident())
        if n == 3:
            raise ValueError(n)
        return n * n

    results = await asyncio.gather(
        *(grouped.call(functools.partial(work, n), 1) for n in range(10)),
        return_exceptions=True,
    )
    assert results[:3] == [0, 1, 4]
    assert isinstance(results[3], ValueError)
    assert results[4:] == [n * n for n in range(4, 10)]
    assert len(threads) == 1  # ten calls, one trip to a worker thread

    release = threading.Event()
    stuck = asyncio.gather(
        grouped.call(lambda: release.wait(5), 0.2),
        grouped.call(lambda: 1, 0.2),  # queued behind the stuck one in its job
        return_exceptions=True,
    )
    await asyncio.sleep(0.05)
    assert await grouped.call(lambda: 2, 1) == 2  # a later moment: a job of its own
    outcomes = await stuck
    assert all(isinstance(o, TimeoutError) for o in outcomes)
    release.set()


def test_a_view_link_is_made_once_repeated_as_is_moved_and_never_through_a_symlink(
    tmp_path: Path,
) -> None:
    from dlaas_fuse_agent.handlers import _link  # noqa: PLC0415  (the blocking part)

    base, mount = tmp_path / "views" / "alice", tmp_path / "mnt"
    view = base / "user.alice" / "sub" / "f1"
    _link(view, mount / "a", base)
    assert view.readlink() == mount / "a"
    _link(view, mount / "a", base)  # a repeat: the same link
    _link(view, mount / "b", base)  # the file moved on the mount: the link follows
    assert view.readlink() == mount / "b"
    assert sorted(p.name for p in view.parent.iterdir()) == ["f1"]  # no temporary left
    (base / "user.alice" / "dir").mkdir()
    with pytest.raises(PermanentError, match="is a directory"):
        _link(base / "user.alice" / "dir", mount / "c", base)
    (tmp_path / "elsewhere").mkdir()
    (base / "planted").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PermanentError, match="not a plain directory"):
        _link(base / "planted" / "f2", mount / "d", base)
    assert not any((tmp_path / "elsewhere").iterdir())
    # the directory kept open from the links above: removed, it is made again; swapped
    # for a symlink, it is refused as before, and nothing lands where the symlink points
    shutil.rmtree(view.parent)
    _link(view, mount / "a", base)
    assert view.readlink() == mount / "a"
    shutil.rmtree(view.parent)
    view.parent.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PermanentError, match="not a plain directory"):
        _link(view, mount / "e", base)
    assert not any((tmp_path / "elsewhere").iterdir())
