"""The JSON schemas of memfit's files (planner/PROFILE.md, planner/PLAN.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from .._lib import MemfitError

_DIR = Path(__file__).resolve().parent


def schema(name: str) -> Dict[str, Any]:
    return json.loads((_DIR / f"{name}.schema.json").read_text())


def validate_profile(data: Dict[str, Any]) -> None:
    """Raise MemfitError naming the first field that breaks the profile schema."""
    try:
        import jsonschema
    except ImportError as e:
        raise MemfitError("memfit: validating a profile needs the jsonschema package (pip install jsonschema)") from e
    validator = jsonschema.Draft202012Validator(schema("profile"))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise MemfitError(f"memfit: profile does not match its schema at {where}: {first.message}")
