"""The lock that keeps two local Rucio stacks off one database."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlaas_devstack import _proc


def test_a_held_lock_refuses_a_second_holder_and_its_file_goes_with_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.lock"
    held = _proc.hold_lock(path, what="the database")
    with pytest.raises(RuntimeError, match="the database is in use"):
        _proc.hold_lock(path, what="the database")
    _proc.release_lock(held, path)
    assert not path.exists()  # runs with their own database names leave nothing behind
    again = _proc.hold_lock(path, what="the database")
    _proc.release_lock(again, path)


def test_a_lock_on_a_file_removed_meanwhile_is_taken_on_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its holder released it (removing the file) between our open and our flock."""
    path = tmp_path / "db.lock"
    real_open = Path.open
    opened: list[int] = []

    def open_then_lose_it(self: Path, *args: object, **kwargs: object) -> object:
        handle = real_open(self, *args, **kwargs)  # type: ignore[call-overload]
        if self == path and not opened:
            opened.append(1)
            path.unlink()  # the holder's release_lock, right after our open
        return handle

    monkeypatch.setattr(Path, "open", open_then_lose_it)
    held = _proc.hold_lock(path, what="the database")
    assert path.exists()  # the lock is on the path's file, not on the removed one
    with pytest.raises(RuntimeError):
        _proc.hold_lock(path, what="the database")
    _proc.release_lock(held, path)
