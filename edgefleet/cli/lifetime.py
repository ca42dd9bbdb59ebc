"""``--lifetime``: how long a signed rollout state stays valid (docs/architecture.md §6)."""

from __future__ import annotations

import argparse
import re
from datetime import timedelta

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_PATTERN = re.compile(r"(\d+)([smhd])")

LIFETIME_HELP = (
    "how long devices accept the signed rollout state: a number with s, m, h or d, e.g. "
    "36h or 7d (default 7d). Re-sign before it ends: 'edgefleet rollout refresh', or "
    "'edgefleet watch' does it when a third is left"
)


def parse_lifetime(text: str) -> timedelta:
    """``7d``, ``36h``, ``90m`` or ``3600s`` as a duration.

    >>> parse_lifetime("36h")
    datetime.timedelta(days=1, seconds=43200)
    """
    match = _PATTERN.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: write a number and a unit, e.g. 7d, 36h or 90m"
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def add_lifetime_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lifetime",
        type=parse_lifetime,
        # edgefleet.edge.rollout.DEFAULT_LIFETIME, not imported: the CLI starts without
        # loading cryptography (a test keeps the two equal).
        default=timedelta(days=7),
        metavar="DURATION",
        help=LIFETIME_HELP,
    )
