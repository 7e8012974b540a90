"""Helpers shared by the tab modules: engine errors as readable UI messages, the GPU queue."""

import functools
import html
import inspect

import gradio as gr

# Every event that runs a model shares one queue slot, so two users never run the U-Net at once.
GPU = {"concurrency_limit": 1, "concurrency_id": "gpu"}
# Cancel buttons must never wait behind the job they cancel.
FREE = {"concurrency_limit": None, "queue": False}

HANDLED = (ValueError, KeyError, OSError, RuntimeError, FileExistsError)


def _message(error: BaseException) -> str:
    """The engine's message, HTML-escaped: toasts render HTML, and messages quote user input."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return html.escape(text or error.__class__.__name__, quote=False)


def readable_errors(fn):
    """Turn the engine's errors into ``gr.Error`` with the engine's own message (no traceback)."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except HANDLED as error:
                raise gr.Error(_message(error), print_exception=False) from error

        return generator

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except HANDLED as error:
            raise gr.Error(_message(error), print_exception=False) from error

    return wrapper


def progress_callback(progress: gr.Progress):
    """Adapt gr.Progress to the studio's ``(fraction, message)`` callback."""
    return lambda fraction, message: progress(fraction, desc=message)


def eta_text(seconds) -> str:
    if seconds is None:
        return "estimating..."
    seconds = int(round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_html(done: int, total: int, label: str) -> str:
    total = max(total, 1)
    return (
        f'<div class="dipsy-progress"><progress value="{done}" max="{total}" style="width:100%"></progress>'
        f"<div>{label}</div></div>"
    )
