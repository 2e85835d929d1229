"""Atomic file writing: a file (or a folder of them) is whole or untouched, never half-written.

Every file this package writes (checkpoints, exports, extracted features, configs) goes to a
temporary name beside its target and is renamed onto it, so a full disk or a kill leaves the
earlier file as it was; `WriteError` says in one line which file failed and why.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from . import settings


class WriteError(OSError):
    """A file could not be written; `reason` says why (a full disk, no permission)."""

    def __init__(self, path: Union[str, Path], reason: str, what: str = "any earlier file there is unchanged") -> None:
        super().__init__(f"{path}: could not be written ({reason}); {what}")
        self.reason = reason


def save_file(obj: dict[str, Any], path: Union[str, Path]) -> None:
    """`torch.save` to a temporary file in the same folder, then rename: never half-written."""
    write_atomic(Path(path), lambda tmp: torch.save(obj, tmp))


def save_tensors(tensors: dict[str, Tensor], path: Union[str, Path], metadata: Optional[dict[str, str]] = None) -> None:
    """A safetensors file, written as `save_file` writes (safetensors' own `save_file` makes
    it owner-only, 0600)."""
    write_atomic(Path(path), lambda tmp: tmp.write_bytes(safetensors_bytes(tensors, metadata)))


def save_text(text: str, path: Union[str, Path]) -> None:
    """A text file (a config.json, remote code), written as `save_file` writes."""
    write_atomic(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a temporary file beside `path`, then rename it to `path`.

    The file gets the user's umask like any other file written here (`tempfile.mkstemp`
    would make it owner-only, 0600, unlike the `config.json` beside it).

    Raises:
        WriteError: the file could not be written (a full disk, no permission); one line
            naming it. `torch.save` reports a full disk as a RuntimeError, which is caught here
            too. An existing `path` is left as it was.
    """
    tmp = temporary_beside(path)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 & ~umask
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        raise WriteError(path, _reason(e)) from None
    finally:
        if tmp.exists():
            tmp.unlink()


TEMPORARY = re.compile(r"\.(?P<target>.+)\.\d+\.[0-9a-f]{8}\.tmp")  # the names `temporary_beside` gives


def temporary_beside(path: Path) -> Path:
    """A fresh hidden name in `path`'s folder (created if needed), unique to this process, for
    a write that a rename then makes `path` atomically; a killed write leaves a file matching
    `TEMPORARY`, whose `target` group is `path`'s name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _reason(e: BaseException) -> str:
    """Why a write failed, in a few words: a nested WriteError's reason, the OS's message, or
    the first line of torch's."""
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or settings.first_line(e)


@contextlib.contextmanager
def staged_folder(output: Union[str, Path], stale: Sequence[str] = ()) -> Iterator[Path]:
    """A temporary folder beside `output` to write an export into (`WriteError` when that fails); on success its files
    replace those of `output` by renames, on an error it is removed and `output` keeps its
    old files. Every file is whole before any is replaced, so a full disk can never leave a
    new `model.safetensors` beside an old `config.json`. Files named in `stale` that this
    export did not write (an earlier export's of another kind) are removed after the renames.
    """
    output = Path(output)
    tmp = temporary_beside(output)
    tmp.mkdir()
    try:
        yield tmp
        output.mkdir(exist_ok=True)
        written = sorted(tmp.iterdir())
        for f in written:
            os.replace(f, output / f.name)
        for name in set(stale) - {f.name for f in written}:
            (output / name).unlink(missing_ok=True)
    except OSError as e:
        raise WriteError(output, _reason(e), "its earlier files are unchanged") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
