"""Bounded decimal types for request bodies: every money and quantity field has limits.

An unbounded `Decimal` lets `1e999999` through validation and overflows the arithmetic
later (a 500); these reject it at the edge with a 422 naming the field. The bounds are wide
on purpose: instrument rules (tick size, lot size, minimum notional) are the venue's job.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field

MAX_DIGITS = 28
"""Significant digits: what the 28-digit default Decimal context computes exactly."""
MAX_DECIMAL_PLACES = 12
MAX_MAGNITUDE = Decimal(10**12)

Quantity = Annotated[
    Decimal,
    Field(
        gt=0,
        le=MAX_MAGNITUDE,
        max_digits=MAX_DIGITS,
        decimal_places=MAX_DECIMAL_PLACES,
        allow_inf_nan=False,
        examples=["0.5"],
    ),
]
"""A positive order quantity in base units."""

Price = Annotated[
    Decimal,
    Field(
        gt=0,
        le=MAX_MAGNITUDE,
        max_digits=MAX_DIGITS,
        decimal_places=MAX_DECIMAL_PLACES,
        allow_inf_nan=False,
        examples=["40000.5"],
    ),
]
"""A positive price in quote currency per base unit."""
