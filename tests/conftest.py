"""Shared fixtures: self-made tiny models (built once per session) and no network, ever."""

import os

# Set before any Hugging Face library is imported: tests must never reach the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def session_threads() -> int:
    """Torch's thread count when the session began (before any fixture could change it)."""
    import torch

    return torch.get_num_threads()


@pytest.fixture(autouse=True)
def _torch_threads(session_threads):
    """Each test ends with the session's torch thread count: a test or fixture that changes it
    in-process (``train-world --threads 1``) would otherwise change the last bits of every
    computation after it, and a bit-exact comparison with a subprocess (which starts with the
    default) would fail."""
    import torch

    yield
    torch.set_num_threads(session_threads)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A folder with sd/, ip-adapter/ and clip/ in the real models' layouts."""
    from dipsy_ui.tiny import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_spec(tiny_models):
    from dipsy_ui.models import ModelSpec

    return ModelSpec.from_models_dir(tiny_models)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_spec):
    """The DipsyPipeline on tiny models (IP-Adapter Plus). Tests must not leave it modified."""
    from dipsy_ui.models import load_pipeline

    return load_pipeline(tiny_spec)


@pytest.fixture(scope="session")
def tiny_clip(tiny_spec):
    from dipsy_ui.models import load_clip

    return load_clip(tiny_spec)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo_app(tmp_path_factory):
    """(url, workspace, studio) of the app as ``python app.py --demo digits`` launches it (the
    shipped digit world), one per module."""
    import app

    workspace = tmp_path_factory.mktemp("workspace")
    port = free_port()
    args = app.parse_args(["--demo", "digits", "--workspace", str(workspace), "--port", str(port)])
    blocks, studio = app.launch(args, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", workspace, studio
    blocks.close()


@pytest.fixture
def chromium_page():
    """A Playwright page in Debian's headless Chromium (never downloaded), 1400x1000, as
    tests/test_browser.py drives it; fails with the install instruction when it is missing."""
    from pathlib import Path

    from playwright import sync_api

    chromium = "/usr/bin/chromium"
    assert Path(chromium).exists(), (
        f"the browser tests need Debian's chromium at {chromium}: apt-get install -y chromium"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        yield page
        browser.close()
