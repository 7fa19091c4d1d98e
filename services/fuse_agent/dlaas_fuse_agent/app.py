"""Composition root of the fuse agent."""

from __future__ import annotations

from collections.abc import Sequence

from dlaas.bus import decoders, topology
from dlaas.bus.connection import Bus
from dlaas.bus.consumer import Consumer
from dlaas.bus.service import main as run_service
from dlaas.contracts import FileReady
from dlaas_fuse_agent.handlers import FuseAgent
from dlaas_fuse_agent.settings import FuseAgentSettings


async def build(bus: Bus, settings: FuseAgentSettings) -> Sequence[Consumer]:
    """Wire the fuse agent's consumers."""
    agent = FuseAgent(bus, settings.fuse)
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
