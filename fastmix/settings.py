"""Settings are written once: a dataclass field made with :func:`setting` carries its
default, its help text, the check of its values and its command-line flag.

Validation (:func:`validate`) and the CLI (``fastmix.cli.args.add_setting_flags``) both
read these fields, so a default, a range or a help text lives in one place.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Check:
    """What values a setting takes: ``kind`` is one of the names in :data:`KINDS`."""

    kind: str
    choices: tuple = ()

    def __post_init__(self):
        # a misspelt kind would otherwise fall through to the number checks
        if self.kind not in KINDS:
            raise ValueError(f"Check kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError(f"Check: choices go with kind 'choice' only, got kind {self.kind!r}, "
                             f"choices {self.choices!r}")

    def __call__(self, name: str, value: Any) -> Any:
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{name} must be one of {self.choices}, got {value!r}")
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
            return value
        if self.kind == "optional_bool":
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be None, True or False, got {value!r}")
            return value
        if self.kind == "count":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
            return value
        optional = self.kind.startswith("optional_")
        if optional and value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.kind.endswith("positive") and not value > 0:
            raise ValueError(f"{name} must be finite and positive, got {value!r}")
        if self.kind.endswith("nonneg") and not value >= 0:
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        return value


KINDS = ("positive", "nonneg", "optional_nonneg", "count", "choice", "bool", "optional_bool")
POSITIVE, NONNEG, OPTIONAL_NONNEG, COUNT = Check("positive"), Check("nonneg"), Check("optional_nonneg"), Check("count")
BOOL, OPTIONAL_BOOL = Check("bool"), Check("optional_bool")


# Seeds every run accepts: torch's generators take 64-bit seeds; 2**63 keeps them non-negative int64.
SEED_LIMIT = 2**63


def check_seed(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in 0..2**63-1, got {value!r}")
    return value


def choice(*choices) -> Check:
    return Check("choice", tuple(choices))


@dataclass(frozen=True)
class Flag:
    """How a setting appears on the command line.

    ``form``: ``"value"`` (``--name VALUE``), ``"switch"`` (``--name`` / ``--no-name``),
    or ``"const"`` (a bare ``--name`` that sets ``const``; e.g. ``--no-mix`` sets
    ``use_mix=False``). ``cli_choices`` replaces the setting's choices on the command
    line where the spelling differs (``--augment none``)."""

    name: str
    form: str = "value"
    const: Any = None
    cli_choices: tuple | None = None
    help: str | None = None  # for a "const" flag: what the flag does
    deprecated: tuple = ()  # old spellings of the flag, still accepted with a warning


def setting(default, help: str, check: Check, *, flag: str | Flag | None = None):
    """A dataclass field for a setting. ``flag`` names its command-line flag (None:
    not on the command line); a plain string is a ``--name VALUE`` flag."""
    if isinstance(flag, str):
        flag = Flag(flag)
    return field(default=default, metadata={"help": help, "check": check, "flag": flag})


def validate(obj):
    """Run every setting's check on ``obj``'s values; returns ``obj``."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        if check is not None:
            check(f.name, getattr(obj, f.name))
    return obj


def setting_fields(cls) -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(cls) if "check" in f.metadata)


def default_of(f: dataclasses.Field):
    return f.default if f.default is not MISSING else f.default_factory()


def command_line_defaults(cls) -> dict:
    """``{name: default}`` of the settings of ``cls`` that have a command-line flag."""
    return {f.name: default_of(f) for f in setting_fields(cls) if f.metadata["flag"] is not None}


# What `fastmix tune` searches: per method, ``{setting name: Grid or LogRange}``, written
# beside the method's settings (its ``SEARCH_SPACE``) and given to ``register``.
@dataclass(frozen=True)
class Grid:
    """One of these values (a categorical choice)."""

    values: tuple


@dataclass(frozen=True)
class LogRange:
    """A number drawn log-uniformly from ``[low, high]``."""

    low: float
    high: float
