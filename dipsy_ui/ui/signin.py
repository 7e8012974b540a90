"""Who may sign in: ``USER:PASSWORD`` entries from ``--auth``, ``--auth-file`` and the
``DIPSY_AUTH`` environment variable, checked by Gradio's own sign-in (``launch(auth=...)``).

A password is stored as given or as a scrypt hash (``scrypt$N$SALT$KEY``, made by
``python app.py --hash-password``), so an auth file need not hold a readable password.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from ..errors import UsageError

ENV = "DIPSY_AUTH"  # comma-separated USER:PASSWORD entries, as --auth takes them
HASHED = "scrypt$"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # scrypt's interactive-login cost (about 50 ms, 16 MB)


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``password`` as ``scrypt$N$SALT$KEY`` (hex), for an auth file."""
    salt = salt or secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return f"{HASHED}{SCRYPT_N}${salt.hex()}${key.hex()}"


def _matches(stored: str, password: str) -> bool:
    if not stored.startswith(HASHED):
        return hmac.compare_digest(stored.encode(), password.encode())
    n, salt, key = stored[len(HASHED) :].split("$")
    tried = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=SCRYPT_R, p=SCRYPT_P)
    return hmac.compare_digest(tried, bytes.fromhex(key))


def _entry(text: str, where: str) -> tuple[str, str]:
    """(user, password or hash) of one ``USER:PASSWORD`` entry. Messages never quote the entry:
    it holds a password."""
    user, colon, secret = text.partition(":")
    user = user.strip()
    if not colon or not user or not secret:
        raise UsageError(
            f"{where} is not USER:PASSWORD (a user name, a colon, then the password or its hash)"
        )
    if secret.startswith(HASHED):
        parts = secret[len(HASHED) :].split("$")
        try:
            valid = (
                len(parts) == 3 and int(parts[0]) > 1 and bytes.fromhex(parts[1]) and bytes.fromhex(parts[2])
            )
        except ValueError:
            valid = False
        if not valid:
            raise UsageError(f"{where}: the hash of {user!r} is not scrypt$N$SALT$KEY; "
                             "make it with python app.py --hash-password")  # fmt: skip
    return user, secret


class Credentials:
    """The users allowed in, called by Gradio as ``auth(user, password) -> bool``."""

    def __init__(self, users: dict[str, str]):
        self.users = users

    def __bool__(self) -> bool:
        return bool(self.users)

    def __call__(self, user: str, password: str) -> bool:
        stored = self.users.get(user)
        if stored is None:
            # An unknown user costs what a known one does, so timing does not tell names apart.
            _matches(_UNKNOWN, password)
            return False
        return _matches(stored, password)


_UNKNOWN = hash_password(secrets.token_hex(16))


def load_credentials(entries: list[str] | None = None, files: list[str | Path] | None = None,
                     environ: dict[str, str] | None = None) -> Credentials:  # fmt: skip
    """The users of ``--auth`` entries, ``--auth-file`` files (one entry a line; blank lines and
    lines starting with ``#`` skipped) and the ``DIPSY_AUTH`` variable; a user given twice is an
    error, so no source silently overrides another."""
    environ = os.environ if environ is None else environ
    found: list[tuple[str, str]] = [
        _entry(text, f"--auth entry {i + 1}") for i, text in enumerate(entries or [])
    ]
    for file in files or []:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise UsageError(f"cannot read the auth file {file}: {error.strerror or error}") from error
        found += [_entry(line.strip(), f"line {n} of {file}") for n, line in enumerate(lines, 1)
                  if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip
    found += [_entry(text.strip(), f"entry {i + 1} of {ENV}")
              for i, text in enumerate(environ.get(ENV, "").split(",")) if text.strip()]  # fmt: skip
    users: dict[str, str] = {}
    for user, secret in found:
        if user in users:
            raise UsageError(f"the user {user!r} is given twice (--auth, --auth-file, {ENV}); keep one")
        users[user] = secret
    return Credentials(users)
