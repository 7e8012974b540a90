"""Crash-safe file writes shared by every module that produces output."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, payload: bytes | str) -> Path:
    """Write to a temporary file in the same folder, then rename over ``path``: readers (and a
    run resumed after a crash) see either the old file or the complete new one, never a torn one.
    Temporary names are unique, so concurrent writers never collide."""
    path = Path(path)
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
