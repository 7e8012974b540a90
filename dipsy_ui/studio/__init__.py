"""The app's engine facade (no Gradio): :class:`Studio` and the per-user :class:`Session`.

:mod:`.core` holds the shared state (workspace, models, the model lock); the tab-specific
methods live in :mod:`.data`, :mod:`.guidance`, :mod:`.generate` and :mod:`.train`.
"""

from .core import SAMPLE, WEIGHTS, GuidanceSettings, Session, Studio, parse_values

__all__ = ["SAMPLE", "WEIGHTS", "GuidanceSettings", "Session", "Studio", "parse_values"]
