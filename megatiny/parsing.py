"""Parsing of values typed by users: command-line flags and lm-eval's `--model_args key=value`."""
from __future__ import annotations

import argparse
from typing import Any

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")


def parse_bool(value: Any, name: str = "value") -> bool | None:
    """True/False from a bool or a word (true/false, 1/0, yes/no; any case); None stays None.

    Raises ValueError naming `name` for anything else.
    """
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def bool_argument(text: str) -> bool:
    """argparse `type=` for true/false flags (`--add-bos-token false`), with argparse's own error."""
    try:
        return bool(parse_bool(text, "the value"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
