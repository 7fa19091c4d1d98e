"""A small data lake in a local Rucio: RSEs ORIGIN and NOTEBOOK, user accounts, datasets of real files."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from rucio.common.exception import Duplicate

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from dlaas_devstack.rucio import RucioStack

log = structlog.get_logger(__name__)

ORIGIN = "ORIGIN"
NOTEBOOK = "NOTEBOOK"
SCRATCH = (
    "SCRATCH"  # a notebook's scratch area: non-deterministic, files keep their paths
)
RSES = (ORIGIN, NOTEBOOK, SCRATCH)
CHUNK = 1000  # files per add_replicas / attach_dids call


@dataclass(frozen=True)
class LakeFile:
    """One file of a dataset made by make_dataset; pfn_path is its path at ORIGIN."""

    scope: str
    name: str
    bytes: int
    adler32: str
    pfn_path: str

    @property
    def lfn_path(self) -> str:
        """The path below an RSE's prefix (Rucio's `hash` lfn2pfn)."""
        return hash_path(self.scope, self.name)

    def pfn_path_at(self, rse: str) -> str:
        """The PFN path of this file at rse (the same at every RSE but for the RSE folder)."""
        return f"/data/{rse.lower()}/{self.lfn_path}"


def hash_path(scope: str, name: str) -> str:
    """Rucio's deterministic `hash` lfn2pfn: <scope>/<md5[0:2]>/<md5[2:4]>/<name>."""
    digest = hashlib.md5(f"{scope}:{name}".encode(), usedforsecurity=False).hexdigest()
    if scope.startswith(("user", "group")):
        scope = scope.replace(".", "/")
    return f"{scope}/{digest[0:2]}/{digest[2:4]}/{name}"


def rse_dir(stack: RucioStack, rse: str) -> Path:
    """The local folder behind an RSE's prefix /data/<rse lower>/."""
    return stack.storage_root / "data" / rse.lower()


def build_lake(stack: RucioStack, *, users: Sequence[str] = ("alice", "bob")) -> None:
    """Create (idempotently) the RSEs, distances, user accounts, limits and scopes."""
    client = stack.client()
    for rse in RSES:
        _add_rse(client, rse, stack.rse_port)
        rse_dir(stack, rse).mkdir(parents=True, exist_ok=True)
    for source, destination in itertools.permutations(RSES, 2):
        _ignore_duplicate(client.add_distance, source, destination, {"distance": 1})
    for user in users:
        _add_user(client, user)
    log.info("lake_built", rses=list(RSES), users=list(users))


def make_dataset(
    stack: RucioStack,
    scope: str,
    name: str,
    n_files: int,
    *,
    file_size: int = 1024,
    account: str = "root",
    at_destination: bool = True,
) -> list[LakeFile]:
    """Write n random files, register them at ORIGIN and attach them to a new dataset.

    With at_destination the bytes are also written under NOTEBOOK's folder: the mock
    transfertool moves nothing, yet a file must be readable there once Rucio says AVAILABLE.
    """
    targets = [ORIGIN, NOTEBOOK] if at_destination else [ORIGIN]
    files = [
        _write_file(stack, scope, f"{name}.f{i}.dat", file_size, targets)
        for i in range(n_files)
    ]
    root = stack.client()
    owner = root if account == "root" else stack.client(account)
    owner.add_dataset(scope, name)
    for chunk in _chunks(files):
        root.add_replicas(rse=ORIGIN, files=[_replica(f) for f in chunk])
        owner.attach_dids(
            scope, name, [{"scope": f.scope, "name": f.name} for f in chunk]
        )
    log.info("dataset_made", scope=scope, name=name, files=n_files, account=account)
    return files


def register_dataset(
    stack: RucioStack,
    scope: str,
    name: str,
    n_files: int,
    *,
    file_size: int = 1024,
    chunk: int = CHUNK,
    after_chunk: Callable[[int], None] | None = None,
) -> list[str]:
    """Register n files at ORIGIN in a new dataset, in bulk, writing no bytes; their DIDs.

    For scale (benchmarks): add_replicas and attach_dids of ``chunk`` files per call, so
    100,000 files take 200 calls; nothing can be read or transferred for real.
    ``after_chunk`` is called with the number of files done (e.g. to ANALYZE the database).
    """
    client = stack.client()
    client.add_dataset(scope, name)
    names = [f"{name}.f{i:06d}" for i in range(n_files)]
    for start in range(0, n_files, chunk):
        part = names[start : start + chunk]
        client.add_replicas(rse=ORIGIN, files=[
            {"scope": scope, "name": n, "bytes": file_size, "adler32": "00000001"}
            for n in part
        ])  # fmt: skip
        client.attach_dids(scope, name, [{"scope": scope, "name": n} for n in part])
        if after_chunk is not None:
            after_chunk(start + len(part))
    log.info("dataset_registered", scope=scope, name=name, files=n_files)
    return [f"{scope}:{n}" for n in names]


def _write_file(
    stack: RucioStack, scope: str, name: str, size: int, rses: Sequence[str]
) -> LakeFile:
    data = os.urandom(size)
    path = hash_path(scope, name)
    for rse in rses:
        target = rse_dir(stack, rse) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    adler32 = f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"
    return LakeFile(scope, name, size, adler32, f"/data/{ORIGIN.lower()}/{path}")


def _replica(lake_file: LakeFile) -> dict[str, Any]:
    return {
        "scope": lake_file.scope,
        "name": lake_file.name,
        "bytes": lake_file.bytes,
        "adler32": lake_file.adler32,
    }


def _chunks(files: list[LakeFile]) -> Iterator[list[LakeFile]]:
    for start in range(0, len(files), CHUNK):
        yield files[start : start + CHUNK]


def _add_rse(client: Any, rse: str, port: int) -> None:  # noqa: ANN401  # untyped rucio Client
    _ignore_duplicate(client.add_rse, rse, deterministic=rse != SCRATCH)
    for protocol in _protocols(rse, port):
        _ignore_duplicate(client.add_protocol, rse, protocol)


def _protocols(rse: str, port: int) -> list[dict[str, Any]]:
    """A root protocol for clients, and a mock one that only the mock transfertool uses."""
    # "//data/...": Rucio joins host:port and prefix as they are; XRootD wants root://h:p//abs
    prefix = f"//data/{rse.lower()}/"
    rw = {"read": 1, "write": 1, "delete": 1}
    off = {"read": 0, "write": 0, "delete": 0}
    root = {
        "scheme": "root", "hostname": "127.0.0.1", "port": port, "prefix": prefix,
        "impl": "rucio.rse.protocols.xrootd.Default",
        "domains": {"lan": rw, "wan": {**rw, "third_party_copy_read": 0, "third_party_copy_write": 0}},
    }  # fmt: skip
    # Without a TPC-capable scheme the submitter drops every source (SkipSchemeMissmatch).
    mock = {
        "scheme": "mock", "hostname": "127.0.0.1", "port": 0, "prefix": prefix,
        "impl": "rucio.rse.protocols.mock.Default",
        "domains": {"lan": off, "wan": {**off, "third_party_copy_read": 1, "third_party_copy_write": 1}},
    }  # fmt: skip
    return [root, mock]


def _add_user(client: Any, user: str) -> None:  # noqa: ANN401  # untyped rucio Client
    user_id, password = "ddmlab", "secret"
    _ignore_duplicate(client.add_account, user, "USER", f"{user}@example.org")
    # The same userpass identity as root, so stack.client(user) can log in as that account.
    _ignore_duplicate(
        client.add_identity,
        account=user, identity=user_id, authtype="USERPASS",
        email=f"{user}@example.org", password=password,
    )  # fmt: skip
    for rse in RSES:
        client.set_local_account_limit(user, rse, -1)
    _ignore_duplicate(client.add_scope, user, f"user.{user}")


def _ignore_duplicate(call: Any, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
    """Run a Rucio add_* call; an existing object counts as done (build_lake is idempotent)."""
    with contextlib.suppress(Duplicate):
        call(*args, **kwargs)
