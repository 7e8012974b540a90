"""Each client reads only the files the app gave it, and no URL names a server path.

Gradio serves an output by copying it into its cache folder (``GRADIO_TEMP_DIR``, here
``WORKSPACE/.uploads/<keyed hash of the content>/<name>``) and sending the client the copy's
path and the URL ``/gradio_api/file=<path>``, which anyone holding it could fetch, and which
shows where the workspace lies. :class:`FileGate`, an ASGI middleware between Gradio's own
middleware and its routes, changes that:

- every browser or API client carries a random ``dipsy-client`` cookie (set on its first
  response: the page for a browser, ``/config`` for ``gradio_client``);
- in what the app sends (the page, API answers, event streams), the cache folder is replaced by
  the alias ``dipsy-files``, and each cache entry named there is recorded as given to that
  cookie; uploads are given to their uploader the same way;
- ``/gradio_api/file=dipsy-files/<entry>/<name>`` is served only to a cookie that was given the
  entry; every other file URL (a server path, another client's entry, a guess) answers 404;
- a request that hands a file back to the app (an input, a gallery click) may name only entries
  given to its cookie; the alias is turned back into the cache path before Gradio reads it.

The gate also refuses an upload whose declared size is over the limit before reading its body
(Gradio's ``max_file_size`` stops a body that does not declare it), and words Gradio's refusals
(upload too large, queue full) for the user.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections import defaultdict
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import PurePosixPath
from urllib.parse import quote

ALIAS = "dipsy-files"  # what clients see instead of the cache folder
COOKIE = "dipsy-client"
BUSY = "The server is busy: too many requests are waiting. Try again in a minute."
NOT_GIVEN = "Not found."  # the same answer for a guess, another client's file and a server path
MB = 2**20

API = "/gradio_api/"
FILE_ROUTE = re.compile(r"/gradio_api/(?:file=|file/|proxy=)(.*)", re.S)
GIVEN = re.compile(re.escape(ALIAS).encode() + rb"/([^/\"\\\s?#]+)/")  # an entry named in text sent out
TEXT_TYPES = (b"application/json", b"text/event-stream", b"text/html")


def upload_refusal(size: int | None, limit: int) -> str:
    """The message for an upload over ``limit`` bytes (``size`` when known)."""
    what = f"This upload ({size / MB:.0f} MB)" if size else "This upload"
    return (f"{what} is over the server's limit of {limit / MB:.0f} MB per upload: upload fewer or "
            "smaller files at a time (the person running the app sets the limit with --max-upload-mb).")  # fmt: skip


class Access:
    """What the gate knows: the entries given to each client, the sessions each browser holds,
    the upload limit, and ``quota(session_id)``, why a session may take no more (or None)."""

    def __init__(
        self, cache: str, max_upload_bytes: int, quota: Callable[[str], object | None] = lambda s: None
    ):
        self.cache = cache.rstrip("/")
        self.max_upload_bytes = max_upload_bytes
        self.quota = quota
        # The cache folder as it appears in JSON text and in URLs.
        forms = {self.cache, quote(self.cache, safe="/"), json.dumps(self.cache)[1:-1]}
        self._forms = sorted((form.encode() for form in forms), key=len, reverse=True)
        self._given: dict[str, set[str]] = defaultdict(set)
        self._sessions: dict[str, set[str]] = defaultdict(set)
        self._lock = threading.Lock()

    def bind(self, client: str | None, session_id: str) -> None:
        """Record that ``client`` holds the session (its uploads count against its quota)."""
        if client:
            with self._lock:
                self._sessions[client].add(session_id)

    def over_quota(self, client: str) -> str | None:
        """Why ``client`` may upload nothing more (a session of its is full), or None."""
        with self._lock:
            sessions = list(self._sessions.get(client, ()))
        refusals = (self.quota(session_id) for session_id in sessions)
        return next((f"Not uploaded: {refusal}." for refusal in refusals if refusal is not None), None)

    def give(self, client: str, entries) -> None:
        with self._lock:
            self._given[client].update(entries)

    def was_given(self, client: str, entry: str) -> bool:
        with self._lock:
            return entry in self._given.get(client, ())

    def hide(self, body: bytes, client: str) -> bytes:
        """``body`` with the cache folder replaced by the alias; the entries it names are given
        to ``client``."""
        for form in self._forms:
            body = body.replace(form, ALIAS.encode())
        named = {match.decode() for match in GIVEN.findall(body)}
        if named:
            self.give(client, named)
        return body

    def entry_path(self, client: str, aliased: str) -> str | None:
        """The cache path of ``dipsy-files/<entry>/<name>`` when ``client`` was given the entry;
        None otherwise (also for anything that is not exactly one entry and one name)."""
        parts = PurePosixPath(aliased).parts
        if len(parts) != 3 or parts[0] != ALIAS or {"..", "."} & set(parts):
            return None
        return f"{self.cache}/{parts[1]}/{parts[2]}" if self.was_given(client, parts[1]) else None

    def reveal(self, value, client: str):
        """A request's JSON ``value`` with the alias turned back into cache paths. Raises
        PermissionError when it names an entry not given to ``client`` or the cache folder itself."""
        if isinstance(value, dict):
            return {key: self.reveal(item, client) for key, item in value.items()}
        if isinstance(value, list):
            return [self.reveal(item, client) for item in value]
        if not isinstance(value, str):
            return value
        if any(form.decode() in value for form in self._forms):
            raise PermissionError(value)
        start = value.find(ALIAS + "/")
        if start < 0 or (start > 0 and not value[:start].endswith("file=")):
            return value  # text that merely contains the word: only paths and file URLs are changed
        path = self.entry_path(client, value[start:])
        if path is None:
            raise PermissionError(value)
        return value[:start] + path


def _header(scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


def _client(scope) -> str | None:
    cookie = _header(scope, b"cookie")
    if not cookie:
        return None
    jar = SimpleCookie()
    try:
        jar.load(cookie.decode("latin-1"))
    except Exception:  # a malformed Cookie header: a new client
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel and re.fullmatch(r"[A-Za-z0-9_-]{20,64}", morsel.value) else None


def _replay(body: bytes, receive):
    """A ``receive`` that hands over ``body`` once, then waits on the real one (disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _reply(send, status: int, text: str, content_type: bytes = b"text/plain; charset=utf-8") -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class FileGate:
    """The ASGI middleware described in the module docstring; ``access`` holds its state."""

    def __init__(self, app, access: Access):
        self.app = app
        self.access = access

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = _client(scope)
        new_cookie = client is None
        client = client or secrets.token_urlsafe(24)
        root, path = scope.get("root_path") or "", scope["path"]
        path = path[len(root) :] if root and path.startswith(root) else path
        method = scope["method"]

        served = FILE_ROUTE.fullmatch(path)
        if served:
            cache_path = self.access.entry_path(client, served.group(1))
            if cache_path is None:
                return await _reply(send, 404, NOT_GIVEN)
            new_path = root + "/gradio_api/file=" + cache_path
            scope = dict(scope, path=new_path, raw_path=quote(new_path).encode())
            return await self.app(scope, receive, send)

        if method == "POST" and path.rstrip("/") == "/gradio_api/upload":
            refusal = self._upload_refusal(scope, client)
            if refusal:
                return await _reply(send, 413, refusal)
        elif (
            method == "POST" and path.startswith(API) and b"json" in (_header(scope, b"content-type") or b"")
        ):
            body = await self._revealed(receive, client)
            if body is None:
                return await _reply(send, 403, json.dumps({"detail": "This request names a file this client "
                                    "was not given; reload the page."}), b"application/json")  # fmt: skip
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
            scope = dict(scope, headers=[*headers, (b"content-length", str(len(body)).encode())])
            receive = _replay(body, receive)
        await self.app(scope, receive, self._hiding(send, client, new_cookie, path))

    def _upload_refusal(self, scope, client: str) -> str | None:
        size = _header(scope, b"content-length")
        size = int(size) if size and size.isdigit() else None
        if size is not None and size > self.access.max_upload_bytes:
            return upload_refusal(size, self.access.max_upload_bytes)
        return self.access.over_quota(client)

    async def _revealed(self, receive, client: str) -> bytes | None:
        """The request's JSON body with the alias turned back into cache paths; None when it
        names a file not given to ``client``."""
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away: Gradio sees the disconnect on its next receive
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            value = json.loads(body)
        except ValueError:
            return body  # not JSON after all: Gradio refuses it
        try:
            return json.dumps(self.access.reveal(value, client)).encode()
        except PermissionError:
            return None

    def _hiding(self, send, client: str, new_cookie: bool, path: str):
        """A ``send`` that sets the client cookie on a new client's response, hides the cache
        folder in text responses (a buffered body gets its new length), and words Gradio's
        refusals for the user."""
        state: dict = {}
        access = self.access

        async def hiding_send(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])]
                if new_cookie:
                    headers.append(
                        (b"set-cookie", f"{COOKIE}={client}; Path=/; HttpOnly; SameSite=Lax".encode())
                    )
                content_type = next((v for k, v in headers if k == b"content-type"), b"")
                status = message["status"]
                replacement = None
                if status == 413 and path.rstrip("/") == "/gradio_api/upload":
                    replacement = upload_refusal(None, access.max_upload_bytes).encode()
                elif status == 503 and path.startswith(API):
                    replacement = json.dumps({"detail": BUSY}).encode()
                state.update(replacement=replacement, text=content_type.startswith(TEXT_TYPES),
                             sized=any(k == b"content-length" for k, _ in headers), chunks=[])  # fmt: skip
                message = dict(message, headers=headers)
                if not (state["replacement"] is not None or (state["text"] and state["sized"])):
                    return await send(message)
                state["start"] = message
                return None
            if message["type"] != "http.response.body":
                return await send(message)
            body = message.get("body", b"")
            if "start" not in state:  # streamed: each event is one chunk, hidden on its own
                if state["text"] and body:
                    message = dict(message, body=access.hide(body, client))
                return await send(message)
            state["chunks"].append(body)
            if message.get("more_body", False):
                return None
            body = state["replacement"]
            if body is None:
                body = access.hide(b"".join(state["chunks"]), client)
            start = state["start"]
            headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send(dict(start, headers=headers))
            await send({"type": "http.response.body", "body": body, "more_body": False})

        return hiding_send
