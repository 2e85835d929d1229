"""A training run's folder: who writes it, which checkpoints are its own, what is left over.

- A lock (`.lock`: pid, host, start time) while a run writes the folder: a second writer is
  refused in one line; a lock whose process is gone (killed, same host) is taken over.
- Checkpoints are `step-N.pt` exactly (N without leading zeros). A run prunes only the files
  it wrote, by name, so `step-best.pt` or `step-5-backup.pt` beside them are never touched and
  never taken for the newest checkpoint.
- Temporary files of interrupted saves (`.step-N.pt.<pid>.<random>.tmp`, as
  `atomic.write_atomic` names them) are removed at start, and
  resuming falls back to the newest checkpoint that reads.
- `log.jsonl` keeps each step's records once: on resume, records after the resumed step
  (written before the kill, replayed after) are dropped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .atomic import TEMPORARY

log = logging.getLogger(__name__)

LOCK = ".lock"
_CHECKPOINT = re.compile(r"step-(0|[1-9]\d*)\.pt")


def checkpoint_name(step: int) -> str:
    return f"step-{step}.pt"


class RunFolder:
    """The folder of one run (created if needed)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- the lock -------------------------------------------------------------------------------
    def lock(self) -> None:
        """Claims the folder for this process.

        Raises:
            ValueError: another live run holds it (names its pid, host and start time).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        lock = self.path / LOCK
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and self._alive(holder):
                    raise ValueError(f"{self.path} is being written by another run (pid {holder['pid']} on "
                                     f"{holder['host']}, since {holder.get('started', '?')}); wait for it to end or "
                                     f"choose another --out (remove {lock} if no run is writing there)") from None
                log.warning("%s: taking over the lock of a run that is gone (%s)", self.path,
                            "unreadable lock" if holder is None else f"pid {holder['pid']}")
                lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return
        raise ValueError(f"{lock}: cannot be claimed; remove it if no run is writing {self.path}")

    def unlock(self) -> None:
        holder = self._holder()
        if holder is not None and holder.get("pid") == os.getpid():
            (self.path / LOCK).unlink(missing_ok=True)

    def _holder(self) -> Optional[dict[str, Any]]:
        try:
            holder = json.loads((self.path / LOCK).read_text())
            return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(holder: dict[str, Any]) -> bool:
        """Whether the lock's process runs: on another host we cannot tell, so we assume it does;
        our own pid is a run of this process that ended without releasing (an error), not a rival."""
        if holder.get("host") != socket.gethostname():
            return True
        pid = holder["pid"]
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every `step-N.pt` in the folder, oldest first."""
        found = [(int(m.group(1)), p) for p in self.path.glob("step-*.pt") if (m := _CHECKPOINT.fullmatch(p.name))]
        return sorted(found)

    def remove_temporary(self) -> None:
        """Removes the temporary files that interrupted saves left (this run holds the lock)."""
        stale = [p for p in self.path.glob(".step-*.tmp")
                 if (m := TEMPORARY.fullmatch(p.name)) and _CHECKPOINT.fullmatch(m.group("target"))]
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            log.info("%s: removed %d temporary file(s) of interrupted saves", self.path, len(stale))

    def newest_readable(self, load: Callable[[Path], dict]) -> Optional[tuple[Path, dict]]:
        """The newest checkpoint that `load` reads, and what it read; a damaged newer one is
        reported and passed over. None when there is no checkpoint."""
        for _, path in reversed(self.checkpoints()):
            try:
                return path, load(path)
            except ValueError as e:
                log.warning("%s; trying the checkpoint before it", e)
        return None

    def prune(self, written: list[str], keep: int) -> list[str]:
        """Deletes the oldest of the checkpoints this run `written` beyond the newest `keep`;
        returns the names still kept."""
        for name in written[:-keep]:
            (self.path / name).unlink(missing_ok=True)
        return written[-keep:]

    # -- the log --------------------------------------------------------------------------------
    def trim_log(self, step: int) -> None:
        """Keeps the records of `log.jsonl` up to `step` (and drops a line cut by a kill)."""
        path = self.path / "log.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))
