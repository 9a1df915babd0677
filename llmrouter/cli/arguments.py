"""Typed command-line values: a count below 1, a NaN or an infinity is the command's usage error (exit 2), said by
argparse beside the option, rather than a request the API refuses or a run that quietly does nothing."""

from __future__ import annotations

import argparse
import calendar
import math
import time


def positive_int(text: str) -> int:
    """A whole number of at least 1 (a count of prompts, of tokens)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def finite_float(text: str) -> float:
    """A number other than NaN and the infinities, which compare with nothing as a bound or a time must."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def fraction(text: str) -> float:
    """A finite number within [0, 1] (a quality target)."""
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], not {text}")
    return value


def non_negative(text: str) -> float:
    """A finite number of at least 0 (days ago)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {text}")
    return value


def percent(text: str) -> float:
    """A finite number within [0, 100] (a share of a volume)."""
    value = finite_float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be within [0, 100], not {text}")
    return value


def retention_days(text: str) -> float:
    """A finite number of days above 0: ROUTER_LEDGER_SQL_RETENTION_DAYS=0 is no retention, so a trim to 0 days, which
    would delete every row but each account's newest, is refused rather than read either way."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0 (0 days is no retention: nothing to trim), not {text}")
    return value


def moment(text: str) -> float:
    """Unix seconds, or a UTC date YYYY-MM-DD."""
    try:
        return finite_float(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%d")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither Unix seconds nor a date YYYY-MM-DD") from None
