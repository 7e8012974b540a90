"""The settings service: the one writer of a session's preset and its generation and training
settings. Every tab and every other service reads them; changes come through here, validated by
the settings dataclasses (:mod:`dipsy_ui.config`), so bad values raise before anything changes."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..config import GenerationConfig, TrainConfig, settings_from_dict
from ..presets import (
    Preset,
    existing_user_preset,
    list_presets,
    list_user_presets,
    load_preset,
    save_user_preset,
)
from .session import Session

if TYPE_CHECKING:  # the core applies a new session's preset through this module
    from .core import Core

# Generation settings that may change between the parts of one run (a resume may use others).
FREE_SETTINGS = ("images_per_class", "batch_size")


def apply_preset(session: Session, preset: Preset) -> None:
    """Make ``preset`` the session's settings: the only place a session's preset, generation and
    training settings are replaced wholesale (a new session, a reopened one, a chosen preset)."""
    session.preset, session.generation, session.train = preset.name, preset.generation, preset.train


class SettingsService:
    """Presets by name (built-in or the user's own) and changes to the session's settings."""

    def __init__(self, core: Core):
        self.core = core

    # -- reading --------------------------------------------------------------------------------

    def generation(self, session: Session) -> GenerationConfig:
        return self.core.session(session).generation

    def train(self, session: Session) -> TrainConfig:
        return self.core.session(session).train

    def preset(self, session: Session) -> str:
        return self.core.session(session).preset

    def preset_choices(self, session: Session | None = None) -> list[str]:
        """The built-in presets' names, then the user's own (none for a session not used yet)."""
        if session is None or session.root is None:
            return list_presets()
        return list_presets() + list_user_presets(session.root / "presets")

    # -- writing --------------------------------------------------------------------------------

    def set_preset(self, session: Session, name: str) -> str:
        """Make a preset (built-in or the user's own, by name only) the session's settings."""
        session = self.core.session(session)
        preset = load_preset(name, user_folder=session.root / "presets")
        apply_preset(session, preset)
        self.core.save_choices(session)
        return f"Preset {preset.name}: {preset.description or 'no description'}"

    def update_generation(self, session: Session, **changes) -> GenerationConfig:
        """Change some generation settings (the Guidance tab's weights, the negative rule, the
        temperature); validated before the session changes."""
        session = self.core.session(session)
        session.generation = replace(session.generation, **changes)
        return session.generation

    def update_train(self, session: Session, **changes) -> TrainConfig:
        """Change some training settings (the Train tab's fields); validated before the session
        changes. A new LoRA rank brings its alpha (:meth:`TrainConfig.with_rank`)."""
        session = self.core.session(session)
        rank = changes.pop("lora_rank", None)
        config = replace(session.train, **changes)
        session.train = config.with_rank(rank) if rank is not None else config
        return session.train

    def use_recorded(self, session: Session, recorded: GenerationConfig) -> GenerationConfig:
        """Make a run's recorded generation settings the session's (to resume it as it began),
        keeping the settings a run may change between its parts."""
        session = self.core.session(session)
        keep = {key: getattr(session.generation, key) for key in FREE_SETTINGS}
        session.generation = settings_from_dict(GenerationConfig, recorded.to_dict() | keep, "generation")
        return session.generation

    # -- the user's presets ---------------------------------------------------------------------

    def existing_preset(self, session: Session, name: str) -> str | None:
        """The user's preset that saving ``name`` would replace, or None."""
        return existing_user_preset(self.core.session(session).root / "presets", name)

    def save_preset(self, session: Session, name: str, overwrite: bool = False) -> str:
        """Save the session's current settings as the user's own preset ``name``; its name. A
        built-in name is refused, an existing one replaced only with ``overwrite``."""
        session = self.core.session(session)
        preset = Preset(name, "saved from the app", session.generation, session.train)
        path = save_user_preset(preset, session.root / "presets", name, overwrite=overwrite)
        session.preset = path.stem
        self.core.save_choices(session)
        return path.stem
