"""Helpers shared by the tab modules: engine errors as readable UI messages, the GPU queue."""

import functools
import html
import inspect
import logging

import gradio as gr

from ..errors import DipsyError

# Every event that runs a model shares one queue slot, so two users never run the U-Net at once.
GPU = {"concurrency_limit": 1, "concurrency_id": "gpu"}
# Cancel buttons must never wait behind the job they cancel.
FREE = {"concurrency_limit": None, "queue": False}

LOG = logging.getLogger("dipsy_ui")
INTERNAL = "Internal error: this is a bug, not something you did. The details are in the server log."


def _message(error: DipsyError) -> str:
    """The engine's message, HTML-escaped: toasts render HTML, and messages quote user input."""
    return html.escape(str(error) or error.__class__.__name__, quote=False)


def _as_ui_error(error: Exception) -> gr.Error:
    """A :class:`DipsyError` keeps its message (written for the user); anything else is a bug:
    its traceback goes to the log and the page says so without details."""
    if isinstance(error, DipsyError):
        return gr.Error(_message(error), print_exception=False)
    LOG.error("internal error", exc_info=error)
    return gr.Error(INTERNAL, print_exception=False)


def readable_errors(fn):
    """Turn exceptions into ``gr.Error``: the engine's own message for a :class:`DipsyError`, an
    "internal error, see the log" message (and the traceback logged) for anything else."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as error:
                raise _as_ui_error(error) from error

        return generator

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:
            raise _as_ui_error(error) from error

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
