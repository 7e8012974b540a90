"""The app as a shared demo, against real servers: sign-in for the page and the API, each
client served only the files the app gave it (never by a server path), bounded uploads, session
quota and queue, and publishing without sign-in refused."""

import os
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, AuthenticationError
from gradio_client.utils import QueueError

import app
from dipsy_ui.errors import UsageError
from dipsy_ui.ui.access import ALIAS, BUSY, MB
from dipsy_ui.ui.signin import hash_password, load_credentials


def preview(name: str) -> list:
    """/preview's inputs for class ``name``: its first image, a sampled negative, 2 steps (quick
    on the CPU), seed 5."""
    return [name, 0, "sample", -1, 7.5, 6.0, 6.0, 0.6, 2, 5, True]


def start(workspace: Path, *flags: str):
    """(url, blocks, studio) of ``python app.py --demo`` with ``flags``, in this process."""
    port = free_port()
    args = app.parse_args(["--demo", "--workspace", str(workspace), "--port", str(port), *flags])
    blocks, studio = app.launch(args, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/", blocks, studio


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """(url, workspace, blocks, studio) of the demo with a 1 MB upload limit."""
    workspace = tmp_path_factory.mktemp("shared")
    url, blocks, studio = start(workspace, "--max-upload-mb", "1")
    yield url, workspace, blocks, studio
    blocks.close()


def connect(url: str, **kwargs) -> Client:
    """A client that keeps the files' descriptions (path, URL) instead of downloading them."""
    return Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": 300}, **kwargs)


def file_data(value) -> list[dict]:
    """Every file description (Gradio's FileData) in an API answer."""
    if isinstance(value, dict):
        if value.get("meta", {}).get("_type") == "gradio.FileData":
            return [value]
        return [found for item in value.values() for found in file_data(item)]
    if isinstance(value, (list, tuple)):
        return [found for item in value for found in file_data(item)]
    return []


def upload_folder() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


def files_in(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def test_sign_in_refuses_strangers_and_admits_users(tmp_path):
    auth_file = tmp_path / "users.txt"
    auth_file.write_text(f"# the demo's users\n\nbob:{hash_password('builder')}\n")
    url, blocks, _ = start(
        tmp_path / "workspace", "--auth", "alice:wonderland", "--auth-file", str(auth_file)
    )
    try:
        # Unauthenticated: the page is the sign-in form, the app's config and its API refuse.
        page = httpx.get(url)
        assert page.status_code == 200 and "Load the demo" not in page.text
        assert httpx.get(url + "config").status_code == 401
        assert httpx.post(url + "gradio_api/queue/join", json={"data": [], "fn_index": 0,
                                                               "session_hash": "x"}).status_code == 401  # fmt: skip
        with pytest.raises(AuthenticationError):
            connect(url)
        with pytest.raises(ValueError, match="Could not login"):
            connect(url, auth=("alice", "not her password"))
        with pytest.raises(ValueError, match="Could not login"):
            connect(url, auth=("mallory", "wonderland"))
        # Signed in (a plain password, a hashed one): the page and the API work.
        assert (
            connect(url, auth=("alice", "wonderland")).predict(api_name="/cancel_preview")
            == "Nothing to cancel."
        )
        assert (
            connect(url, auth=("bob", "builder")).predict(api_name="/cancel_preview") == "Nothing to cancel."
        )
        with httpx.Client() as browser:
            assert (
                browser.post(url + "login", data={"username": "bob", "password": "builder"}).status_code
                == 200
            )
            assert browser.get(url + "config").status_code == 200
            assert "Load the demo" in browser.get(url).text
    finally:
        blocks.close()


def test_signed_in_users_reopen_only_their_own_sessions(shared):
    _, _, _, studio = shared
    core = studio.core
    alices = studio.open_session("")
    core.claim(alices, "alice")
    assert core.admits(alices.id, "alice")
    assert not core.admits(alices.id, "bob") and not core.admits(alices.id, None)
    # A session made without sign-in reopens for whoever holds its id, and becomes the first
    # signed-in user's; an id naming no session opens a new one.
    anonymous = studio.open_session("")
    core.claim(anonymous, None)
    assert core.admits(anonymous.id, None) and core.admits(anonymous.id, "bob")
    core.claim(anonymous, "bob")
    assert not core.admits(anonymous.id, None)
    assert core.admits("0123456789ab", "carol") and core.admits("../../etc", "carol")


def test_a_second_client_cannot_read_the_first_clients_files(shared, tmp_path):
    url, workspace, _, studio = shared
    owner, stranger = connect(url), connect(url)
    assert owner.cookies != stranger.cookies
    sessions_before = set((workspace / "sessions").glob("*"))
    # The demo world's data, cut to two classes: generation and training stay short.
    table, *_ = owner.predict(api_name="/load_demo")
    names = sorted(row[0] for row in table["data"])
    for name in names[2:]:
        owner.predict(name, api_name="/remove_class")
    (root,) = set((workspace / "sessions").glob("*")) - sessions_before
    similarity = owner.predict(0.4, api_name="/compute_similarity")
    previewed = owner.predict(*preview(names[0]), api_name="/preview")
    generated = owner.predict(1, 1, "run-1", api_name="/generate")  # one image per class
    test_zip = tmp_path / "test.zip"
    with zipfile.ZipFile(test_zip, "w") as archive:
        for name in names[:2]:
            for file in sorted((studio.data.demo_data_dir() / "test" / name).iterdir())[:2]:
                archive.write(file, f"test/{name}/{file.name}")
    trained = owner.predict(1, None, None, None, handle_file(str(test_zip)), False, api_name="/train")
    assert trained[0].startswith("Done"), trained[0]
    adapter = owner.predict(api_name="/download_adapter")
    given = {what: file_data(answer) for what, answer in [("similarity", similarity), ("preview", previewed),
             ("generated", generated), ("adapter", adapter)]}  # fmt: skip
    assert all(given.values()), given
    assert len(file_data(generated)) >= 2 and file_data(adapter)[0]["path"].endswith(".zip")

    own = httpx.post(
        url + "gradio_api/upload", files={"files": ("own.txt", b"mine")}, cookies=stranger.cookies
    )
    own_entry = own.json()[0].split("/")[1]
    assert httpx.get(f"{url}gradio_api/file={own.json()[0]}", cookies=stranger.cookies).status_code == 200
    server_paths = (str(workspace), str(upload_folder()), "/tmp")
    for what, files in given.items():
        for file in files:
            # No server path in what the client is given: a name under the alias only.
            assert file["path"].startswith(f"{ALIAS}/"), (what, file)
            assert not any(where in file["url"] or where in file["path"] for where in server_paths), (
                what,
                file,
            )
            mine = httpx.get(file["url"], cookies=owner.cookies)
            assert mine.status_code == 200 and mine.content, (what, file["url"])
            # The same URL, reused by another client or by nobody in particular, is not served.
            assert httpx.get(file["url"], cookies=stranger.cookies).status_code == 404, what
            assert httpx.get(file["url"]).status_code == 404, what
            # Nor by walking out of an entry the stranger holds into the owner's.
            walk = f"{url}gradio_api/file={ALIAS}/{own_entry}/%2E%2E/{file['path'][len(ALIAS) + 1 :]}"
            assert httpx.get(walk, cookies=stranger.cookies).status_code == 404

    # Guessing: every file of the session and of Gradio's cache, by its server path, is refused,
    # even to the owner (server paths are never served).
    guesses = sorted(files_in(root) | files_in(upload_folder()))
    assert any(path.suffix == ".png" for path in guesses) and any(path.suffix == ".zip" for path in guesses)
    for path in guesses:
        for client in (stranger, owner):
            for route in ("file=", "file/"):
                answer = httpx.get(f"{url}gradio_api/{route}{path}", cookies=client.cookies)
                assert answer.status_code == 404, (route, path)

    # Handing the owner's file to the app as the stranger's input (a class of stolen images) is
    # refused before the app sees it; the owner may hand it back.
    config = httpx.get(url + "config", cookies=owner.cookies).json()
    add_class = next(dep["id"] for dep in config["dependencies"] if dep.get("api_name") == "add_class")
    stolen = given["preview"][0]

    def join(client: Client, name: str) -> httpx.Response:
        body = {"data": [None, name, [stolen]], "fn_index": add_class, "session_hash": "s" + name,
                "event_data": None, "trigger_id": None}  # fmt: skip
        return httpx.post(url + "gradio_api/queue/join", json=body, cookies=client.cookies)

    refused = join(stranger, "stolen")
    assert refused.status_code == 403 and "not given" in refused.json()["detail"]
    assert join(owner, "kept").status_code == 200
    assert not list(workspace.glob("sessions/*/data/stolen"))


def test_an_upload_over_the_limit_is_refused_and_leaves_nothing(shared):
    url, _, _, _ = shared
    client = connect(url)
    assert (
        httpx.get(url + "config", cookies=client.cookies).json()["max_file_size"] == MB
    )  # the page checks first
    before = files_in(upload_folder())
    big = os.urandom(2 * MB)
    declared = httpx.post(
        url + "gradio_api/upload", files={"files": ("big.zip", big)}, cookies=client.cookies
    )
    assert declared.status_code == 413 and "limit of 1 MB per upload" in declared.text, declared.text

    # A body that does not declare its size (chunked) is stopped at the limit while it streams.
    boundary = "dipsyboundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.zip"\r\n'
            "Content-Type: application/zip\r\n\r\n").encode()  # fmt: skip
    body = head + big + f"\r\n--{boundary}--\r\n".encode()
    streamed = httpx.post(url + "gradio_api/upload", cookies=client.cookies,
                          content=(body[i : i + 65536] for i in range(0, len(body), 65536)),
                          headers={"content-type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    assert streamed.status_code == 413 and "limit of 1 MB per upload" in streamed.text, streamed.text
    assert files_in(upload_folder()) == before
    # Under the limit, the same upload goes through (and is named by the alias only).
    small = httpx.post(
        url + "gradio_api/upload", files={"files": ("small.zip", big[:1000])}, cookies=client.cookies
    )
    assert small.status_code == 200 and small.json()[0].startswith(f"{ALIAS}/"), small.text


def test_a_full_session_makes_nothing_new_and_keeps_what_it_made(shared):
    url, workspace, _, studio = shared
    client = connect(url)
    sessions_before = set((workspace / "sessions").glob("*"))
    table, *_ = client.predict(api_name="/load_demo")
    (root,) = set((workspace / "sessions").glob("*")) - sessions_before
    controls = preview(table["data"][0][0])
    client.predict(*controls, api_name="/preview")
    made = {path: path.read_bytes() for path in files_in(root)}
    quota = studio.core.quota_bytes
    studio.core.quota_bytes = 1000  # bytes: the session's demo data alone is over it
    try:
        with pytest.raises(AppError, match="its limit is 0 MB, so nothing new is made"):
            client.predict(*controls, api_name="/preview")
    finally:
        studio.core.quota_bytes = quota
    assert {path: path.read_bytes() for path in files_in(root)} == made
    client.predict(*controls, api_name="/preview")  # under the quota again: it works


def test_a_full_queue_answers_busy(shared):
    url, _, blocks, _ = shared
    assert blocks._queue.max_size == app.parse_args([]).queue_size  # --queue-size reaches the queue
    client = connect(url)
    blocks._queue.max_size = 0  # as if the queue were full: every new request is one too many
    try:
        with pytest.raises(QueueError):
            client.predict(api_name="/load_demo")
        answer = httpx.post(url + "gradio_api/queue/join", cookies=client.cookies,
                            json={"data": [], "fn_index": 0, "session_hash": "busy"})  # fmt: skip
        assert answer.status_code == 503 and answer.json()["detail"] == BUSY
    finally:
        blocks._queue.max_size = app.parse_args([]).queue_size
    assert client.predict(api_name="/cancel_preview") == "Nothing to cancel."


@pytest.mark.parametrize("flags, where", [(["--share"], "gradio.live"), (["--host", "0.0.0.0"], "0.0.0.0")])
def test_publishing_without_sign_in_is_refused_unless_asked(flags, where, tmp_path, capsys):
    assert app.main(["--demo", "--workspace", str(tmp_path), *flags]) == 2
    error = capsys.readouterr().err
    assert where in error and "--auth USER:PASSWORD" in error and "--no-auth" in error
    assert not list(tmp_path.iterdir())  # refused before anything was made
    assert app.sign_in(app.parse_args([*flags, "--no-auth"])) is None
    assert "warning:" in capsys.readouterr().err
    assert app.sign_in(app.parse_args([*flags, "--auth", "alice:wonderland"]))("alice", "wonderland")
    assert app.sign_in(app.parse_args(["--host", "127.0.0.1"])) is None  # loopback: no sign-in needed


def test_credentials_from_flags_files_and_the_environment(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text(f"# comment\n\ncarol:{hash_password('c:ol,pass')}\ndave:spaced pass\n")
    credentials = load_credentials(["alice:wonder:land"], [users], {"DIPSY_AUTH": "erin:one, frank:two"})
    accepted = [("alice", "wonder:land"), ("carol", "c:ol,pass"), ("dave", "spaced pass"), ("erin", "one"),
                ("frank", "two")]  # fmt: skip
    assert all(credentials(user, password) for user, password in accepted)
    refused = [("alice", "wonder"), ("carol", "scrypt"), ("dave", "spaced"), ("erin", "two"), ("nobody", "")]
    assert not any(credentials(user, password) for user, password in refused)
    assert not load_credentials([], [], {})
    with pytest.raises(UsageError, match="given twice"):
        load_credentials(["erin:x"], [], {"DIPSY_AUTH": "erin:one"})
    users.write_text("alice=hunter2\n")  # no colon: the message must not quote the line
    with pytest.raises(UsageError, match="line 1 of .* is not USER:PASSWORD") as refused_line:
        load_credentials([], [users], {})
    users.write_text("alice:scrypt$1$zz$00\n")
    with pytest.raises(UsageError, match="--hash-password"):
        load_credentials([], [users], {})
    with pytest.raises(UsageError, match="cannot read the auth file"):
        load_credentials([], [tmp_path / "missing.txt"], {})
    assert "hunter2" not in str(refused_line.value)


def test_in_the_browser_each_user_signs_in_and_reopens_only_their_own_session(tmp_path, chromium_page):
    from playwright.sync_api import expect

    workspace = tmp_path / "workspace"
    url, blocks, studio = start(workspace, "--auth", "alice:wonderland", "--auth", "bob:builder")
    page = chromium_page

    demo = studio.data.demo_data_dir()
    first = sorted(path.name for path in (demo / "train").iterdir())[0]  # a class of the demo data

    def owners() -> list[str]:
        return sorted(path.read_text() for path in workspace.glob("sessions/*/owner"))

    def sign_in(user: str, password: str, sessions: list[str] | None = None) -> None:
        """Sign in; with ``sessions``, wait until the page has opened its session (the owners
        of all sessions are then ``sessions``), so that no click races the page's load."""
        page.goto(url)
        page.locator("input[type=text]").fill(user)
        page.locator("input[type=password]").fill(password)
        page.get_by_role("button", name="Login").click()
        if sessions is not None:
            expect(page.get_by_text("Demo mode")).to_be_visible()
            deadline = time.monotonic() + 60
            while owners() != sessions and time.monotonic() < deadline:
                page.wait_for_timeout(200)
            assert owners() == sessions
            page.wait_for_timeout(1000)  # the session reaches the page just after its folder

    try:
        sign_in("alice", "not her password")
        expect(page.get_by_text("Incorrect credentials", exact=False)).to_be_visible()
        expect(page.get_by_text("Demo mode")).to_have_count(0)
        sign_in("alice", "wonderland", ["alice"])
        page.locator("#load-demo").click()
        expect(page.locator("#data-table")).to_contain_text(first)
        # The page's images come through the gate, to this browser: the thumbnails are drawn.
        thumbnails = page.locator("img[src*='gradio_api/file=']")
        expect(thumbnails.first).to_be_visible()
        drawn = "img => img.complete && img.naturalWidth > 0"
        deadline = time.monotonic() + 30
        while not thumbnails.first.evaluate(drawn) and time.monotonic() < deadline:
            page.wait_for_timeout(200)  # visible comes before loaded
        assert thumbnails.first.evaluate(drawn), "the thumbnail never loaded through the gate"
        assert all(str(workspace) not in src for src in thumbnails.evaluate_all("els => els.map(e => e.src)"))

        # Over the session quota, an upload from the page is refused, saying so; nothing is lost.
        made = files_in(workspace / "sessions")
        quota, studio.core.quota_bytes = studio.core.quota_bytes, 1000
        try:
            archive = tmp_path / "more.zip"
            with zipfile.ZipFile(archive, "w") as zipped:
                zipped.write(next((demo / "train" / first).iterdir()), f"more/{first}/a.png")
            page.locator("#dataset-zip input[type=file]").set_input_files(str(archive))
            expect(page.get_by_text("so nothing new is made", exact=False).first).to_be_visible()
        finally:
            studio.core.quota_bytes = quota
        assert made <= files_in(workspace / "sessions")

        # Bob, in the same browser: Alice's session is not his; his page's load makes his own.
        page.goto(url + "logout")
        sign_in("bob", "builder", ["alice", "bob"])
        expect(page.locator("#data-table")).not_to_contain_text(first)
        page.reload()
        expect(page.get_by_text("Demo mode")).to_be_visible()
        page.wait_for_timeout(2000)  # the load's refresh has landed
        expect(page.locator("#data-table")).not_to_contain_text(first)
        assert owners() == ["alice", "bob"]
        # Alice again: her own session reopens, with her digits.
        page.goto(url + "logout")
        sign_in("alice", "wonderland", ["alice", "bob"])
        expect(page.locator("#data-table")).to_contain_text(first)
    finally:
        blocks.close()
