"""Building blocks of the config dataclasses: a field with its help text,
and validation that names the bad value."""
import dataclasses
from typing import Any, Optional, Tuple

from simclr_tf2.errors import ConfigError


def setting(default: Any, help_text: str, flag: Optional[str] = None,
            choices: Optional[Tuple[str, ...]] = None):
    """A config field with its command-line help: the one place a setting is
    described; the flags of `python -m simclr_tf2.train` are generated from
    these. `flag`: the flag's name when it is not the field's ('' for a
    field with no flag); `choices`: the values allowed (an enum flag)."""
    metadata = {"help": help_text}
    if flag is not None:
        metadata["flag"] = flag
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


def check(condition: bool, message: str) -> None:
    """Raises ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)


def check_choice(name: str, value: Any, choices) -> None:
    check(value in choices,
          f"{name} must be one of {list(choices)}. Received: {name}={value!r}")


def check_range(name: str, value, low=None, high=None, low_inclusive=True):
    ok = True
    if low is not None:
        ok = value >= low if low_inclusive else value > low
    if high is not None:
        ok = ok and value <= high
    bounds = []
    if low is not None:
        bounds.append(f"{'>=' if low_inclusive else '>'} {low}")
    if high is not None:
        bounds.append(f"<= {high}")
    check(ok, f"{name} must be {' and '.join(bounds)}. Received: {name}={value!r}")
