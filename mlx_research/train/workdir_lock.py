"""One run per workdir: a lock file holding the owner's host and pid.

Process 0 takes `WORKDIR/lock` before anything is written and removes it when the run ends. A lock
left by a run that died (same host, pid no longer running) is taken over with a message; a live
owner, or one on another host whose liveness cannot be checked, makes the new run stop with one
line naming the owner.
"""

from __future__ import annotations

import json
import os
import socket
import time


class WorkdirLockedError(RuntimeError):
    """Another run holds the workdir."""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class WorkdirLock:
    """`acquire()` / `release()` the lock file `path` (usually WORKDIR/lock)."""

    def __init__(self, path: str):
        self.path = path
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        self.held = False

    def _read(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable or half-written: treated as stale below

    def acquire(self) -> str | None:
        """Takes the lock; returns a message when a stale lock was taken over.

        Raises:
            WorkdirLockedError: a live run (or one on another host) holds it.
        """
        note = None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder is None:
                    continue  # released meanwhile: try again
                host, pid = holder.get("host"), holder.get("pid")
                mine = host == self.owner["host"] and pid == self.owner["pid"]
                dead = host == self.owner["host"] and isinstance(pid, int) and not _running(pid)
                if not (mine or dead or not holder):
                    since = holder.get("since", "?")
                    raise WorkdirLockedError(
                        f"workdir {os.path.dirname(self.path)} is in use by pid {pid} on host "
                        f"{host} (since {since}); if that run is dead, delete {self.path}"
                    )
                if not mine:
                    note = f"took over the stale lock {self.path} of pid {pid} (not running)"
                os.remove(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(dict(self.owner, since=time.strftime("%Y-%m-%d %H:%M:%S")), f)
            self.held = True
            return note
        raise WorkdirLockedError(f"could not take the lock {self.path} (it keeps changing)")

    def release(self) -> None:
        """Removes the lock file if this process still holds it."""
        if not self.held:
            return
        self.held = False
        holder = self._read() or {}
        if (holder.get("host"), holder.get("pid")) == (self.owner["host"], self.owner["pid"]):
            os.remove(self.path)
