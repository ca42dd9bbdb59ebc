"""Entry point of the ``edgefleet`` console script.

Each command group lives in its own module with a ``register(subparsers)`` function. The
modules import their heavy dependencies (scikit-learn, TensorFlow, ...) inside the command
handlers, so that ``edgefleet score`` and ``edgefleet agent`` run on a device that has only
the edge extras installed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from edgefleet import __version__
from edgefleet.errors import EdgefleetError

# Modules whose ``register`` adds commands; a module missing its optional dependencies
# still registers (imports happen inside handlers).
COMMAND_MODULES = (
    "edgefleet.cli.cmd_data",
    "edgefleet.cli.cmd_train",
    "edgefleet.cli.cmd_register",
    "edgefleet.cli.cmd_bundle",
    "edgefleet.cli.cmd_score",
    "edgefleet.cli.cmd_batch",
    "edgefleet.cli.cmd_demo",
    "edgefleet.cli.cmd_broker",
    "edgefleet.cli.cmd_identity",
    "edgefleet.cli.cmd_fleet",
    "edgefleet.cli.cmd_agent",
    "edgefleet.cli.cmd_simulate",
    "edgefleet.cli.cmd_monitor",
    "edgefleet.cli.cmd_reports",
    "edgefleet.cli.cmd_watch",
    "edgefleet.cli.cmd_serve",
    "edgefleet.cli.cmd_serve_model",
    "edgefleet.cli.cmd_stream",
)

DESCRIPTION = """\
edgefleet puts scikit-learn models on edge devices and keeps them good there.

A first run, on generated telco-churn data:
  edgefleet data generate --rows 20000 --out churn.csv
  edgefleet train --data churn.csv --target churn --model rf
  edgefleet keys generate
  edgefleet export latest --out bundle/
  edgefleet verify bundle/ --key .edgefleet/keys/edgefleet.pub
  edgefleet score bundle/ --input churn.csv --key .edgefleet/keys/edgefleet.pub

Models, keys and the registry live in the home folder (--home, or $EDGEFLEET_HOME,
default ./.edgefleet). Run 'edgefleet COMMAND --help' for each command.
"""


def default_home() -> Path:
    return Path(os.environ.get("EDGEFLEET_HOME", ".edgefleet"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="folder for the registry, models and keys (default: $EDGEFLEET_HOME or ./.edgefleet)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def _quiet_native_logs() -> None:
    """TensorFlow and LiteRT log from C++ at import (CPU features, MLIR passes); on a
    terminal that buries edgefleet's own progress lines. A user's own setting wins."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_native_logs()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.home is None:
        args.home = default_home()
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        result = handler(args)
    except EdgefleetError as error:
        print(f"edgefleet: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        # A device installs only the edge extras; central commands then lack their packages.
        print(
            f"edgefleet: error: '{args.command}' needs the package {error.name!r}, which is "
            "not installed here: pip install 'edgefleet[central]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("edgefleet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `edgefleet score ... | head` closes the pipe early: not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
