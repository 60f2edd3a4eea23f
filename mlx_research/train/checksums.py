"""Checksums of a checkpoint step directory: <step>/checksums.json = {relative path: sha256 hex}.

Written once a step is complete, checked before it is restored, so bytes changed on disk (a bad
sector, a truncated copy, an overwrite of the same length) are caught instead of restoring
silently into a different model. Orbax's step-level bookkeeping files are left out: orbax rewrites
them while committing, after the checksums are taken (`_CHECKPOINT_METADATA` gets the commit time).
"""

from __future__ import annotations

import hashlib
import json
import os

FILENAME = "checksums.json"
_UNHASHED = {FILENAME, "_CHECKPOINT_METADATA", "commit_success.txt"}  # top level of the step only


class ChecksumError(ValueError):
    """A step's files differ from its checksums (the message names the first such file)."""


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def compute(step_dir: str) -> dict[str, str]:
    """{path relative to `step_dir` ('/'-separated): sha256} of every file of the step."""
    sums = {}
    for root, dirs, files in os.walk(step_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir).replace(os.sep, "/")
            if rel not in _UNHASHED:
                sums[rel] = file_digest(path)
    return sums


def write(step_dir: str) -> None:
    """Writes `step_dir`/checksums.json (through a temporary file, so it is whole or absent)."""
    sums, path = compute(step_dir), os.path.join(step_dir, FILENAME)
    with open(path + ".tmp", "w") as f:
        json.dump(sums, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def verify(step_dir: str) -> bool:
    """True if every listed file exists with its checksum, False if the step has no checksums
    (killed before they were written, or written by an older version); raises ChecksumError
    naming the first missing or changed file."""
    path = os.path.join(step_dir, FILENAME)
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            sums = json.load(f)
        if not isinstance(sums, dict) or not sums:
            raise ValueError("not a non-empty JSON object")
    except ValueError as e:
        raise ChecksumError(f"{FILENAME} unreadable ({e})") from None
    for rel, expected in sorted(sums.items()):
        file = os.path.join(step_dir, *rel.split("/"))
        if not os.path.isfile(file):
            raise ChecksumError(f"file {rel} missing")
        if file_digest(file) != expected:
            raise ChecksumError(f"checksum mismatch in {rel}")
    return True
