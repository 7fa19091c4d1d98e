"""Composition root of the fuse agent."""

from __future__ import annotations

from collections.abc import Sequence

from dlaas.bus import decoders, topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Consumer
from dlaas.bus.service import main as run_service
from dlaas.contracts import FileReady
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

    agent = FuseAgent(bus, settings.fuse, on_unreadable)
    return [
        Consumer(
            bus,
            topology.FUSE_AGENT_FILES,
            decoders.events(FileReady),
            {FileReady.event_type: agent.on_file_ready},
        ),
    ]


def main() -> None:
    """``dlaas-fuse-agent``: one fuse agent process (one per notebook node)."""
    settings = FuseAgentSettings()
    run_service("fuse_agent", settings, lambda bus: build(bus, settings))
