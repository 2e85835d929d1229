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
- A run's identity, besides its settings, is the content of its inputs (teacher, `--init`,
  train / valid manifests with the label files it reads), recorded as sha256 digests in every
  checkpoint: `--resume` refuses other inputs (`input_changes`) and accepts moved copies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .atomic import TEMPORARY

log = logging.getLogger(__name__)

LOCK = ".lock"
_CHECKPOINT = re.compile(r"step-(0|[1-9]\d*)\.pt")


def checkpoint_name(step: int) -> str:
    return f"step-{step}.pt"


# -- a run's inputs -------------------------------------------------------------------------------
Inputs = dict[str, Optional[dict[str, str]]]  # teacher, init, train, valid -> {"path", "sha256"}; None: not given
_CHUNK = 1 << 20


def _update(digest: Any, path: Path, skip_first_line: bool = False) -> None:
    with open(path, "rb") as f:
        if skip_first_line:
            f.readline()
        while chunk := f.read(_CHUNK):
            digest.update(chunk)


def content_digest(path: Union[str, Path]) -> str:
    """sha256 of a file's bytes (streamed: one read of a teacher `.pt`, however large), or of
    a folder's files, by relative name and bytes. Entries whose name starts with a dot (`.git`,
    `.cache`) are left out: they are not the model."""
    path, digest = Path(path), hashlib.sha256()
    if not path.is_dir():
        _update(digest, path)
        return digest.hexdigest()
    for file in sorted(path.rglob("*")):
        name = file.relative_to(path)
        if file.is_file() and not any(part.startswith(".") for part in name.parts):
            digest.update(f"{name.as_posix()}\0{file.stat().st_size}\0".encode())
            _update(digest, file)
    return digest.hexdigest()


def manifest_digest(manifest: Union[str, Path], label_file: Optional[Path] = None) -> str:
    """sha256 of a manifest's entries (every line after its root line, so the corpus may move
    as well as the manifest) and of the label file the recipe reads from it, if any. The audio
    itself is not read: at 281 k utterances that would take hours; the names and lengths stand
    for it."""
    digest = hashlib.sha256()
    _update(digest, Path(manifest), skip_first_line=True)
    if label_file is not None:
        digest.update(b"\0labels\0")
        _update(digest, Path(label_file))
    return digest.hexdigest()


def input_record(path: Union[str, Path], sha256: str) -> dict[str, str]:
    """What a checkpoint records of one input: its absolute path (named in messages) and digest."""
    return {"path": str(Path(path).resolve()), "sha256": sha256}


def input_changes(saved: Inputs, current: Inputs) -> list[str]:
    """`"role: what differs"` for each input whose content differs from the saved one (a moved
    identical file is the same input; the path is only named)."""
    changes = []
    for role in sorted(set(saved) | set(current)):
        old, new = saved.get(role), current.get(role)
        if (old is None and new is None) or (old and new and old["sha256"] == new["sha256"]):
            continue
        if old is None:
            changes.append(f"{role}: none before, now {new['path']}")
        elif new is None:
            changes.append(f"{role}: {old['path']} before, none now")
        elif old["path"] == new["path"]:
            changes.append(f"{role}: {new['path']} changed since the run started")
        else:
            changes.append(f"{role}: {new['path']} differs from {old['path']}")
    return changes


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
