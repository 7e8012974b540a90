"""Crash-safe file writes shared by every module that produces output, and the recognition of
what such a write leaves behind when the process dies in the middle of it."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

# write_atomic's temporary name is ".<target>.<random>.partial", the random part being what
# tempfile.mkstemp puts between prefix and suffix: 8 characters from [a-z0-9_]. Matching all of
# it, not just the dot and the suffix, keeps a user's own ".notes.partial" from ever matching.
_TEMPORARY = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.partial")


def write_atomic(path: str | Path, payload: bytes | str) -> Path:
    """Write to a temporary file in the same folder, then rename over ``path``: readers (and a
    run resumed after a crash) see either the old file or the complete new one, never a torn one.
    Temporary names are unique, so concurrent writers never collide. A process killed between
    the two steps leaves the hidden temporary file behind (see :func:`leftover_target`)."""
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


def leftover_target(name: str) -> str | None:
    """The name of the file in the same folder that :func:`write_atomic` was writing when it left
    the temporary file ``name`` behind, or ``None`` when ``name`` is not such a temporary file."""
    match = _TEMPORARY.fullmatch(name)
    return match["target"] if match else None
