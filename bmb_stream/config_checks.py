"""The checks of configuration values: a predicate and the words that say what it accepts, kept in
each schema field's metadata (`key`) and applied by `config.validate`."""

import math
from collections.abc import Callable
from dataclasses import field
from typing import Any

from omegaconf import MISSING, ListConfig

DEVICES = ("auto", "cpu", "cuda")  # and cuda:N
Check = tuple[Callable[[Any], bool], str]  # a predicate over the value, and what it accepts: "a positive integer"


# --- checks: a predicate and the words that say what it accepts --------------------------------------
def integer(low: int | None = None, nullable: bool = False, bits: int | None = None) -> Check:
    """An integer >= low (and below 2^bits)."""
    text = {None: "an integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
    text += f" and below 2^{bits}" if bits else ""
    return (lambda v: (nullable and v is None)
            or (isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low)
                and (bits is None or v < 2 ** bits))), text + (" or null" if nullable else "")


def number(low: float | None = None, high: float | None = None, open_low: bool = False, open_high: bool = False,
           nullable: bool = False, infinite: bool = False) -> Check:
    """A number in a range; finite unless `infinite` (inf: no limit)."""
    if low is not None and high is not None:
        text = f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    elif low is not None:
        text = "positive" if low == 0 and open_low else f"{'>' if open_low else '>='} {low}"
    else:
        text = "a number"

    def ok(v) -> bool:
        if nullable and v is None:
            return True
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or (math.isinf(v) and not infinite):
            return False
        return ((low is None or (v > low if open_low else v >= low))
                and (high is None or (v < high if open_high else v <= high)))
    return ok, text + (" or null" if nullable else "")


def boolean() -> Check:
    return (lambda v: isinstance(v, bool)), "true or false"


def choice(*options: str) -> Check:
    return (lambda v: v in options), ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 1 else options[0]


def resume_mode() -> Check:
    return (lambda v: v is True or v is False or v == "auto"), "true, false or auto"


def text(nullable: bool = True) -> Check:
    return (lambda v: isinstance(v, str) or (nullable and v is None)), "a string" + (" or null" if nullable else "")


def device() -> Check:
    return (lambda v: isinstance(v, str) and (v in DEVICES or v.startswith("cuda:"))), "auto, cpu, cuda or cuda:N"


def pixel_fractions(open_low: bool = False) -> Check:
    """Three per-channel numbers on the scale of pixel values in [0, 1] (a mean, a standard deviation)."""
    each = number(0, 1, open_low=open_low)
    return ((lambda v: v is not None and len(v) == 3 and all(each[0](x) for x in v)),
            f"a list of three numbers, each finite and {each[1]} (fractions of the pixel range)")


def shard_urls() -> Check:
    """Shard URLs: one string (a URL, a brace pattern, a folder), a list of them, or null."""
    return ((lambda v: v is None or isinstance(v, str)
             or isinstance(v, (list, ListConfig)) and all(isinstance(u, str) for u in v)),
            "a URL, a brace pattern or a folder (a string), a list of them, or null")


def anything() -> Check:
    return (lambda v: True), "any value"


def key(check: Check | None = None, default: Any = MISSING) -> Any:
    """A field checked by `check` (else by its type); without a default the YAML files give its value
    (??? until then)."""
    return field(default=default, metadata={"check": check} if check else {})


POSITIVE = integer(1)
COUNT = integer(0)
FRACTION = number(0, 1, open_low=True)  # (0, 1]
NON_NEGATIVE = number(0)
SECONDS = number(0, open_low=True)
