"""Every option of every subcommand of the three CLIs has help text."""

from __future__ import annotations

import argparse

import pytest

from harmlens.attacks.__main__ import build_parser as attacks_parser
from harmlens.guards.__main__ import build_parser as guards_parser
from harmlens.probes.__main__ import build_parser as probes_parser


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...]):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


@pytest.mark.parametrize("build", [probes_parser, attacks_parser, guards_parser], ids=["probes", "attacks", "guards"])
def test_every_option_has_help(build):
    options = list(_walk(build(), ()))
    commands = {path for path, _ in options}
    assert len(commands) >= 2 and len(options) >= 10  # the walk reached the subcommands
    missing = [f"{' '.join(path)} {'/'.join(a.option_strings) or a.dest}" for path, a in options if not a.help]
    assert missing == []
