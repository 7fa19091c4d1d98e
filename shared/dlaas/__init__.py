"""dlaas: DataLake-as-a-Service for Rucio data lakes (shared library and notebook client)."""

from dlaas.client.api import ReadyFile, StageResult, astage, stage

__all__ = ["ReadyFile", "StageResult", "astage", "stage"]
