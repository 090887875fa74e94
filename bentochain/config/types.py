"""Pydantic types for numbers that arrive as JSON, at the gateway and in the profile alike."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator


def _whole(value: Any) -> Any:
    """JSON Schema's integer is any number without a fraction: 8.0 is one, strict or not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer that strict validation also takes as 8.0 (never as "8" or true). Bounds go before
# it (``Annotated[int, Field(ge=1), Whole]``): after it, an optional field's JSON Schema loses them.
Whole = BeforeValidator(_whole)
Int = Annotated[int, Whole]
