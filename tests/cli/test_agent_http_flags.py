"""``edgefleet agent``'s --http-* flags: they reach the local API's limits, their help
teaches, and a bad value is refused before the agent starts."""

from __future__ import annotations

import argparse

import pytest

from edgefleet.cli import cmd_agent
from edgefleet.edge.agent.http import ApiLimits
from edgefleet.errors import InputError

REQUIRED = ["agent", "--fleet", "f", "--device-id", "d", "--state-dir", "s", "--trust-key", "k"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet")
    cmd_agent.register(parser.add_subparsers())
    return parser


def test_the_defaults_are_the_api_defaults() -> None:
    args = _parser().parse_args(REQUIRED)
    assert cmd_agent.http_limits_from(args) == ApiLimits()


def test_flags_set_the_limits() -> None:
    flags = ["--http-max-body", "2048", "--http-max-records", "10", "--http-max-depth", "5"]
    flags += ["--http-timeout", "7", "--http-connections", "3", "--http-threads", "1"]
    limits = cmd_agent.http_limits_from(_parser().parse_args(REQUIRED + flags))
    assert limits == ApiLimits(
        max_body=2048, max_records=10, max_depth=5, timeout=7, connections=3, threads=1
    )


def test_a_bad_limit_is_refused() -> None:
    args = _parser().parse_args([*REQUIRED, "--http-max-depth", "1000"])
    with pytest.raises(InputError, match="max_depth must be at most 200"):
        cmd_agent.http_limits_from(args)


def test_help_names_every_limit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["agent", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--http-max-body", "--http-max-records", "--http-max-depth", "--http-timeout"):
        assert flag in text
    assert "local API limits" in text
    assert "413 beyond" in text
