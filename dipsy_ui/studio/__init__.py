"""The app's engine facade (no Gradio): :class:`Studio`, its core and its services.

:mod:`.core` holds what every service shares (workspace, models, the model lock, sessions and
:meth:`~.core.Core.run_job`); :mod:`.jobs` the event every long action yields; one module per
service: :mod:`.data`, :mod:`.similarity`, :mod:`.guidance`, :mod:`.runs`, :mod:`.training`;
:mod:`.session` the per-user state; :mod:`.studio` puts them together.
"""

from .guidance import SAMPLE, WEIGHTS, GuidanceSettings, parse_values
from .jobs import CANCELLED, DONE, FAILED, PROGRESS, STEP, Progress
from .session import Session
from .studio import Studio

__all__ = ["CANCELLED", "DONE", "FAILED", "PROGRESS", "SAMPLE", "STEP", "WEIGHTS", "GuidanceSettings",
           "Progress", "Session", "Studio", "parse_values"]  # fmt: skip
