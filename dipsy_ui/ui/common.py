"""Helpers shared by the tab modules: engine errors as readable UI messages, event options,
following a Studio job."""

import functools
import html
import inspect
import logging

import gradio as gr

from ..errors import DipsyError
from ..studio import FAILED

# Long actions start at once and wait their turn for the model in the Studio's lock, where Cancel
# and a newer preview can reach them (a request held in Gradio's queue is reached by neither);
# the limit only bounds the threads that wait.
JOBS = {"concurrency_limit": 32, "concurrency_id": "jobs"}
# Cancel buttons must never wait behind the job they cancel.
FREE = {"concurrency_limit": None, "queue": False}
NOTHING_TO_CANCEL = "Nothing to cancel."

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


def refusal(error: Exception) -> str:
    """The status line for an action that did not happen: the engine's reason for a
    :class:`DipsyError` (also shown as a toast, which repeats the status), else the internal-error
    line (its traceback logged)."""
    if not isinstance(error, DipsyError):
        LOG.error("internal error", exc_info=error)
        return INTERNAL
    message = str(error) or error.__class__.__name__
    gr.Warning(_message(error))
    return f"Not done: {message}"


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


def follow(events):
    """A Studio job's events for a view; a failed job raises its error here, where
    :func:`readable_errors` shows it (the job's other ends, done and cancelled, are the view's)."""
    for event in events:
        if event.kind == FAILED:
            raise event.error
        yield event


def cancel_reply(cancelled: bool):
    """What a Cancel button writes to its tab's status: nothing when a job was cancelled (the
    job's own stream reports "Cancelling..." and how it ended, in order), else that there was
    nothing to cancel."""
    return gr.skip() if cancelled else NOTHING_TO_CANCEL


def progress_html(done: int, total: int, label: str) -> str:
    total = max(total, 1)
    return (
        f'<div class="dipsy-progress"><progress value="{done}" max="{total}" style="width:100%"></progress>'
        f"<div>{label}</div></div>"
    )
