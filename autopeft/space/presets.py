"""Packaged search-space presets (``search_spaces/*.yaml``, shipped as package data)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from autopeft.errors import SpaceError


def _preset_dir() -> Path:
    # Installed wheels carry the presets under autopeft/search_spaces; a source checkout reads them
    # from the top-level search_spaces/ folder (the same files; pyproject maps one onto the other).
    packaged = Path(str(resources.files("autopeft"))) / "search_spaces"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "search_spaces"


def presets() -> dict[str, Path]:
    """Preset name -> YAML file."""
    return {p.stem: p for p in sorted(_preset_dir().glob("*.yaml"))}


def resolve_space_path(space: str | Path) -> Path:
    """A file path as given, or the file of a preset name such as ``autopeft``."""
    path = Path(space)
    if path.is_file():
        return path
    known = presets()
    if str(space) in known:
        return known[str(space)]
    raise SpaceError(
        str(space),
        [("<file>", f"no such file or preset; presets: {', '.join(known) or 'none installed'}; or give a YAML path")],
    )
