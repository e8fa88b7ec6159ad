"""Search spaces: the YAML schema, presets, and the plan <-> parameter codec."""

from autopeft.space.presets import presets, resolve_space_path
from autopeft.space.schema import OBJECTIVES, SpaceSpec
from autopeft.space.space import ModelDims, SearchSpace, load_space, parse_space, resolve_sizes

__all__ = [
    "OBJECTIVES",
    "ModelDims",
    "SearchSpace",
    "SpaceSpec",
    "load_space",
    "parse_space",
    "presets",
    "resolve_sizes",
    "resolve_space_path",
]
