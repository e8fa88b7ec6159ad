"""Errors a user can act on. Each message names the field, the value and the fix."""

from __future__ import annotations


class AutopeftError(Exception):
    """Base class for errors caused by user input; the CLI prints them without a traceback."""


class PlanError(AutopeftError, ValueError):
    """A PEFT plan is malformed (bad method, site, size, layer index)."""


class SpaceError(AutopeftError, ValueError):
    """A search-space YAML is invalid. ``errors`` lists (yaml path, message) pairs."""

    def __init__(self, source: str, errors: list[tuple[str, str]]):
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {path}: {msg}" for path, msg in errors)
        super().__init__(f"{source}: {len(errors)} error(s) in search space\n{lines}")


class UnsupportedModelError(AutopeftError, ValueError):
    """The model's architecture has no injection rules."""


class StudyError(AutopeftError, ValueError):
    """A study request conflicts with what the study database holds."""


class TaskError(AutopeftError, ValueError):
    """A task or dataset cannot be loaded as asked."""
