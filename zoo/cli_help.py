"""One help formatter for every command line of the project (torch-free: argparse only).

    parser = argparse.ArgumentParser(prog="python -m ...", description=__doc__, formatter_class=HelpFormatter)
    sub.add_parser("name", formatter_class=HelpFormatter)   # subparsers do not inherit it

`--help` then shows `(default: VALUE)` after every option whose default is worth stating: not None, not an
empty list, not the off state of a flag (`store_true`/`store_false`), and not already described by the option's
own help (text holding `%(default)`, `default:` or `(default`). A description with line breaks (a docstring's
usage block) is printed as written; a one-paragraph description is wrapped as usual.
"""
from __future__ import annotations

import argparse
import copy
import re

_MENTIONS_DEFAULT = re.compile(r"%\(default\)|\bdefault:|\(default\b", re.IGNORECASE)
_FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                 argparse._AppendConstAction, argparse._CountAction, argparse._HelpAction, argparse._VersionAction,
                 argparse._SubParsersAction)


def shows_default(action: argparse.Action) -> bool:
    """Whether `--help` should state `action`'s default (the formatter appends it unless the help already does)."""
    default = action.default
    if isinstance(action, _FLAG_ACTIONS) or default is None or default is argparse.SUPPRESS:
        return False
    if isinstance(default, (list, tuple, dict, set, str)) and len(default) == 0:
        return False
    return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)


def mentions_default(help_text: str | None) -> bool:
    return bool(help_text) and bool(_MENTIONS_DEFAULT.search(help_text))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """ArgumentDefaultsHelpFormatter that skips uninformative defaults and keeps preformatted descriptions."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if shows_default(action) and not mentions_default(help_text):
            help_text = f"{help_text} (default: %(default)s)" if help_text else "(default: %(default)s)"
        return help_text

    def _format_action(self, action: argparse.Action) -> str:
        # argparse prints no help line at all for an option without help text: give it one to hold the default.
        if not action.help and shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return argparse.RawDescriptionHelpFormatter._fill_text(self, text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)
