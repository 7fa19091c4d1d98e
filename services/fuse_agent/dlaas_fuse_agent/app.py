"""Composition root of the fuse agent."""

from __future__ import annotations

from collections.abc import Sequence

from dlaas.bus import decoders, topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Consumer
from dlaas.bus.service import main as run_service
from dlaas.contracts import FileReady
from dlaas_fuse_agent.adapters import download
from dlaas_fuse_agent.adapters.xrootdfs import XrootdfsMount
from dlaas_fuse_agent.handlers import FuseAgent
from dlaas_fuse_agent.settings import FuseAgentSettings, FuseOptions
from dlaas_fuse_agent.watcher import MountWatcher


async def watch_mounts(options: FuseOptions) -> dict[str, MountWatcher]:
    """Mount every xrootdfs mount of the configuration and watch it, by RSE.

    Mounts without a source are directories someone else keeps: not watched.
    """
    watchers: dict[str, MountWatcher] = {}
    for spec in options.mounts:
        if spec.source is None:
            continue
        watcher = MountWatcher(
            spec.rse, XrootdfsMount(spec, options.watch), options.watch
        )
        await watcher.start()
        watchers[spec.rse] = watcher
    return watchers


async def build(bus: Bus, settings: FuseAgentSettings) -> Sequence[Consumer]:
    """Wire the fuse agent: its mounts (unmounted when the bus closes) and its consumer."""
    watchers = await watch_mounts(settings.fuse)
    for watcher in watchers.values():
        bus.on_close(watcher.stop)

    def on_unreadable(rse: str) -> None:
        if rse in watchers:
            watchers[rse].poke()

    async def mounts_healthy() -> bool:
        return all(watcher.healthy for watcher in watchers.values())

    bus.checks["mounts"] = mounts_healthy
    if settings.fuse.downloads:
        download.configure_client()
    agent = FuseAgent(bus, settings.fuse, on_unreadable)
    queues = (
        [topology.fuse_agent_node_files(settings.fuse.node)] if settings.fuse.node else []
    )
    if settings.fuse.take_unrouted or not queues:
        queues.append(topology.FUSE_AGENT_FILES)
    return [
        Consumer(
            bus,
            queue,
            decoders.events(FileReady),
            {FileReady.event_type: agent.on_file_ready},
        )
        for queue in queues
    ]


def main() -> None:
    """``dlaas-fuse-agent``: one fuse agent process (one per notebook node)."""
    settings = FuseAgentSettings()
    run_service("fuse_agent", settings, lambda bus: build(bus, settings))
