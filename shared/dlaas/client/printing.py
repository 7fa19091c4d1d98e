"""What the user sees while waiting: a line per file, a progress bar on a terminal."""

from __future__ import annotations

import sys
from typing import Never, TextIO

from tqdm.auto import tqdm

from dlaas.client.results import StageResult
from dlaas.contracts import Notification


class Printer:
    """One line per file (one JSON object with ``--json``), a progress bar on a terminal."""

    def __init__(self, *, as_json: bool, out: TextIO) -> None:
        self.as_json = as_json
        self.out = out
        self.bar: tqdm[Never] | None = None
        self.show_bar = not as_json and sys.stderr.isatty()
        self.pending: str | None = None
        self.shown: set[str] = set()  # files already printed (wait: status, then live)

    def __call__(self, note: Notification, result: StageResult) -> None:
        """Show one new notification (a file already shown is skipped)."""
        if note.did is not None:
            if note.did in self.shown:
                return
            self.shown.add(note.did)
        if self.as_json:
            print(note.model_dump_json(), file=self.out, flush=True)
            return
        if note.kind == "accepted" and self.show_bar and note.bytes:
            self.bar = tqdm(total=note.bytes, unit="B", unit_scale=True, desc="staging",
                            file=sys.stderr)  # fmt: skip
        if note.kind == "completed" and not result.done:
            self.pending = note.text  # the last files' lines may still be on their way
        else:
            self._write(_line(note))
        if self.pending and result.done:
            self._write(self.pending)
            self.pending = None
        if self.bar is not None:
            self.bar.n = sum(f.bytes for f in result.ready.values())
            files = len(result.ready) + len(result.failed)
            self.bar.set_postfix_str(f"{files}/{result.files_total} files", refresh=True)

    def _write(self, line: str | None) -> None:
        if line:
            (self.bar.write if self.bar else print)(line, file=self.out)

    def close(self) -> None:
        """Print what waited for the last files, and take the bar away (idempotent)."""
        self._write(self.pending)
        self.pending = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _line(note: Notification) -> str | None:
    if note.kind == "file-ready":
        return f"ready   {note.did}  {note.path}  {note.cache_url}"
    if note.kind == "file-failed":
        return f"FAILED  {note.did}  {note.reason}"
    return (
        note.text
        if note.kind in ("accepted", "completed", "failed", "cancelled")
        else None
    )
