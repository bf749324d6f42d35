"""megatiny.parsing: one boolean parser for flags and lm-eval --model_args."""
import argparse

import pytest

from megatiny.parsing import bool_argument, parse_bool


@pytest.mark.parametrize("text, expected", [("true", True), ("Yes", True), ("1", True), (True, True),
                                            ("FALSE", False), ("no", False), (" 0 ", False), (False, False),
                                            (None, None)])
def test_parse_bool(text, expected):
    assert parse_bool(text) is expected


def test_bad_values_name_the_field():
    with pytest.raises(ValueError, match="add_bos_token must be true or false, got 'maybe'"):
        parse_bool("maybe", "add_bos_token")
    parser = argparse.ArgumentParser()
    parser.add_argument("--flag", type=bool_argument)
    assert parser.parse_args(["--flag", "no"]).flag is False
    with pytest.raises(argparse.ArgumentTypeError, match="true or false, got 'x'"):
        bool_argument("x")
