"""Turning user input into checked specs: the one entry every submission path goes through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import SpecError
from .model import EpisodeSpec
from .runtimes import load_runtime


def check_spec(spec: EpisodeSpec | Mapping[str, Any]) -> EpisodeSpec:
    """A spec, or a mapping of spec fields, checked in full: fields, size, the runtime exists,
    and the runtime accepts its params. Raises SpecError (UnknownRuntime) naming the culprit."""
    if isinstance(spec, Mapping):
        spec = EpisodeSpec.from_dict(spec)  # checks its fields
    elif isinstance(spec, EpisodeSpec):
        spec.check()
    else:
        raise SpecError("spec", f"expected an EpisodeSpec or a mapping, not {type(spec).__name__}")
    load_runtime(spec.runtime).validate(spec.params)
    return spec
