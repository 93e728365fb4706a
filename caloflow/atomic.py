"""Write outputs completely or not at all: a temporary file in the same folder, then a rename.

While an atomic write is open (in the main thread), SIGINT and SIGTERM raise :class:`Interrupted`
(a ``KeyboardInterrupt``) so that the temporary file is removed on the way out, whatever the
writer was doing; a signal that lands where Python cannot raise (a ``__del__``, an HDF5 close
callback) is remembered and raised at the next :func:`check_interrupted` or when the write is
committed, instead of printing "Exception ignored" and being lost. The previous handlers are put
back when the last open write ends.

Temporary names are ``.STEM.PID.XXXXXXXX.tmpSUFFIX`` next to the target. Temporary files of the
same target left by a process that no longer exists (kill -9, power loss) are removed when the next
write to that target starts. The final file gets the permissions of a plain ``open()``:
``0o666 & ~umask``.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: the signals turned into :class:`Interrupted` while an atomic write is open
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while an atomic write was open; ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    depth = 0  # open atomic writes in this process (main thread)
    previous: dict = {}  # signal -> handler before the first write opened
    previous_hook = None  # sys.unraisablehook before the first write opened
    pending: int | None = None  # a signal that arrived and has not been raised yet
    defer = 0  # > 0: record signals, do not raise them (commit and clean-up)
    active: set[str] = set()  # temporary files this process is writing now


def _handler(signum, frame) -> None:
    _State.pending = signum
    if _State.defer == 0:
        raise Interrupted(signum)


def _unraisable(hook_args) -> None:
    # an Interrupted raised inside __del__ or a C callback: keep it pending, print nothing
    if hook_args.exc_type is not None and issubclass(hook_args.exc_type, KeyboardInterrupt):
        if _State.pending is None:
            _State.pending = getattr(hook_args.exc_value, "signum", signal.SIGINT)
        return
    (_State.previous_hook or sys.__unraisablehook__)(hook_args)


def check_interrupted() -> None:
    """Raise :class:`Interrupted` if a signal arrived during an open write and was not raised yet."""
    if _State.pending is not None and _State.depth > 0:
        raise Interrupted(_State.pending)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Signals that arrive inside are recorded, not raised (commit and clean-up must not be cut)."""
    _State.defer += 1
    try:
        yield
    finally:
        _State.defer -= 1


@contextmanager
def _signals_trapped() -> Iterator[None]:
    """Install the SIGINT/SIGTERM handlers for the outermost open write; restore them after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _State.depth == 0:
        _State.pending = None
        _State.previous = {s: signal.getsignal(s) for s in SIGNALS}
        _State.previous_hook = sys.unraisablehook
        sys.unraisablehook = _unraisable
        for s in SIGNALS:
            signal.signal(s, _handler)
    _State.depth += 1
    failed = True
    try:
        yield
        failed = False
    finally:
        _State.depth -= 1
        if _State.depth == 0:
            with deferred_signals():
                for s, h in _State.previous.items():
                    signal.signal(s, h if h is not None else signal.SIG_DFL)
                sys.unraisablehook = _State.previous_hook or sys.__unraisablehook__
                pending, _State.pending = _State.pending, None
            if pending is not None and not failed:
                # the output is complete, but the user asked to stop: stop now
                raise Interrupted(pending)


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # not thread safe, only where /proc does not tell
    os.umask(mask)
    return mask


def _temporary_pattern(path: Path) -> re.Pattern:
    # .STEM.PID.XXXXXXXX.tmpSUFFIX (this version) or .STEM.XXXXXXXX.tmpSUFFIX (older versions)
    return re.compile(
        rf"^\.{re.escape(path.stem)}\.(?:(\d+)\.)?[a-z0-9_]{{8}}\.tmp{re.escape(path.suffix)}$"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files of writes to ``path`` whose process is gone (or that an older version left)."""
    path = Path(path)
    pattern = _temporary_pattern(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    stale = []
    for name in names:
        match = pattern.match(name)
        if match is None:
            continue
        candidate = path.parent / name
        pid = match.group(1)
        if str(candidate) in _State.active:
            continue
        if pid is None or int(pid) == os.getpid() or not _alive(int(pid)):
            stale.append(candidate)
    return stale


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove :func:`stale_temporaries` of ``path``; returns what was removed."""
    removed = []
    for candidate in stale_temporaries(path):
        try:
            if candidate.is_file() and not candidate.is_symlink():
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            pass  # another process removed it, or it is not ours to remove
    return removed


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on error removed.

    The temporary name keeps the suffix of ``path``, so writers that pick a format by suffix
    (matplotlib, h5py) behave as for the final name. SIGINT and SIGTERM inside raise
    :class:`Interrupted` (the temporary file is removed); stale temporary files of the same target
    are removed first; the final file has mode ``0o666 & ~umask``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    with _signals_trapped():
        tmp = None
        try:
            with deferred_signals():  # the name must be registered before a signal can cut in
                fd, tmp = tempfile.mkstemp(
                    prefix=f".{path.stem}.{os.getpid()}.",
                    suffix=f".tmp{path.suffix}",
                    dir=path.parent,
                )
                _State.active.add(tmp)
                os.close(fd)
            yield Path(tmp)
            with deferred_signals():
                check_interrupted()
                os.chmod(tmp, 0o666 & ~_umask())
                os.replace(tmp, path)
                _State.active.discard(tmp)
        except BaseException:
            with deferred_signals():
                if tmp is not None:
                    _State.active.discard(tmp)
                    try:
                        os.unlink(tmp)
                    except FileNotFoundError:
                        pass
            raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


__all__ = [
    "SIGNALS",
    "Interrupted",
    "check_interrupted",
    "deferred_signals",
    "stale_temporaries",
    "remove_stale_temporaries",
    "atomic_output",
    "write_text_atomic",
]
