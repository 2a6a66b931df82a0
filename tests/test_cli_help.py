"""Every command line's `--help` states its defaults (zoo.cli_help.HelpFormatter, shared by all parsers).

Each CLI runs in this process (`main([... "--help"])`, SystemExit caught) with `ArgumentParser.print_help`
recording the parser that printed, so the check reads the actual options and their defaults. `bench` runs in a
subprocess: nothing outside bench imports it (tests/test_architecture.py).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zoo.cli_help import HelpFormatter, mentions_default, shows_default

REPO_ROOT = Path(__file__).resolve().parents[1]

# (command, module defining main, leading positional arguments of main, argv before --help)
CLIS: list[tuple[str, str, tuple[str, ...], list[str]]] = [
    ("python -m zoo", "zoo.__main__", (), []),
    ("python -m zoo list", "zoo.__main__", (), ["list"]),
    ("python -m zoo config", "zoo.__main__", (), ["config"]),
    ("python -m zoo validate", "zoo.__main__", (), ["validate"]),
    ("python -m zoo.train", "zoo.training.cli", (), []),
    ("python -m zoo.pretrain", "zoo.training.pretrain_cli", (), []),
    ("python -m zoo.sweep", "zoo.analysis.sweep", (), []),
    ("python -m zoo.crossval", "zoo.analysis.crossval", (), []),
    ("python -m zoo.viz", "zoo.analysis.viz", (), []),
    ("python -m zoo.viz mil", "zoo.analysis.viz", (), ["mil"]),
    ("python -m zoo.viz fusion", "zoo.analysis.viz", (), ["fusion"]),
    ("python -m zoo.viz attention-score", "zoo.analysis.viz", (), ["attention-score"]),
    ("python -m zoo.data.synthetic", "zoo.data.synthetic.__main__", (), []),
    ("python -m zoo.data.synthetic.large_slide", "zoo.data.synthetic.large_slide", (), []),
    ("python -m zoo.data.synthetic.difficulty", "zoo.data.synthetic.difficulty", (), []),
    ("python -m zoo.data.synthetic.ceiling", "zoo.data.synthetic.ceiling", (), []),
    ("python -m zoo.data.tile", "zoo.data.tile", (), []),
    ("python -m zoo.data.mri", "zoo.data.mri", (), []),
    ("python -m zoo.features", "zoo.training.extract", (), []),
    ("python -m zoo.features extract", "zoo.training.extract", (), ["extract"]),
    ("python -m zoo.encoders", "zoo.encoders", (), []),
    ("python -m zoo.viewer", "zoo.viewer.cli", (), []),
    ("python -m export.onnx", "export.cli", ("onnx",), []),
    ("python -m export.torchscript", "export.cli", ("torchscript",), []),
    ("python -m export.parity", "export.parity", (), []),
    ("python -m triton_repo.build", "triton_repo.build", (), []),
    ("python -m triton_repo.serve", "triton_repo.serve", (), []),
    ("python -m triton_repo.client", "triton_repo.client", (), []),
    ("python -m triton_repo.client predict", "triton_repo.client", (), ["predict"]),
    ("python -m triton_repo.client predict-cohort", "triton_repo.client", (), ["predict-cohort"]),
    ("python -m bench.summarize", "bench.summarize", (), []),
]
SUBPROCESS_PACKAGES = ("bench",)


def _parser_tree(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _parser_tree(sub)
    return found


def describe_help(module: str, lead: list[str], argv: list[str]) -> dict[str, Any]:
    """Run `module.main(*lead, argv + ["--help"])`; return the help text and the printing parser's options."""
    printed: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.print_help

    def recording_print_help(self, file=None):
        printed.append(self)
        return original(self, file)

    out = io.StringIO()
    argparse.ArgumentParser.print_help = recording_print_help
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            importlib.import_module(module).main(*lead, [*argv, "--help"])
    finally:
        argparse.ArgumentParser.print_help = original
    assert len(printed) == 1, f"{module} {argv}: --help printed {len(printed)} times"
    parser = printed[0]
    return {
        "help": out.getvalue(),
        "formatters": sorted({p.formatter_class.__qualname__ for p in _parser_tree(parser)}),
        "options": [
            {"name": a.option_strings[-1] if a.option_strings else a.dest, "positional": not a.option_strings,
             "default": str(a.default), "shows": shows_default(a), "hand": mentions_default(a.help)}
            for a in parser._actions
        ],
    }


def _describe(module: str, lead: tuple[str, ...], argv: list[str]) -> dict[str, Any]:
    if module.split(".")[0] not in SUBPROCESS_PACKAGES:
        return describe_help(module, list(lead), argv)
    code = ("import json, sys; from tests.test_cli_help import describe_help; "
            "print(json.dumps(describe_help(*json.loads(sys.argv[1]))))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps([module, list(lead), argv])], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def option_section(help_text: str, name: str, positional: bool = False) -> str:
    """The lines `--help` prints for one option (its invocation line and the indented help under it), joined."""
    lines = help_text.splitlines()
    options = "" if positional else r"(?:-[^ ,]*(?: [^ ,]+)*, )*"  # earlier spellings: "-o OUT, --output OUT"
    pattern = re.compile(rf"^( +){options}{re.escape(name)}(?=[ ,]|$)")
    for i, line in enumerate(lines):
        match = pattern.match(line)
        if not match:
            continue
        indent = len(match.group(1))
        section = [line]
        for nxt in lines[i + 1:]:
            if not nxt.strip() or len(nxt) - len(nxt.lstrip()) <= indent:
                break
            section.append(nxt)
        return " ".join(" ".join(section).split())
    raise AssertionError(f"option {name} not found in help:\n{help_text}")


@pytest.mark.parametrize("command, module, lead, argv", CLIS, ids=[c[0] for c in CLIS])
def test_help_shows_defaults(command, module, lead, argv):
    info = _describe(module, lead, argv)
    text = info["help"]
    assert text.startswith(f"usage: {command}"), text[:200]
    assert info["formatters"] == ["HelpFormatter"], f"{command}: parsers must use zoo.cli_help.HelpFormatter"
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text
    for option in info["options"]:
        if not option["shows"]:
            continue
        section = option_section(text, option["name"], option["positional"])
        if option["hand"]:  # the option's own help states the default in words; the formatter adds nothing
            assert "default" in section.lower(), f"{command} {option['name']}: {section}"
            assert section.count("(default: ") <= 1, f"{command} {option['name']}: default stated twice: {section}"
        else:
            expected = f"(default: {' '.join(option['default'].split())})"
            assert expected in section, f"{command} {option['name']}: expected {expected!r} in {section!r}"


def test_serve_help_says_bind_defaults_to_loopback():
    text = describe_help("triton_repo.serve", [], [])["help"]
    section = option_section(text, "--bind")
    assert "(default: 127.0.0.1)" in section and "0.0.0.0" in section, section


def test_every_argument_parser_is_covered():
    """A new command line must be added to CLIS (and so use the shared formatter)."""
    covered = {module for _, module, _, _ in CLIS}
    defining = set()
    for package in ("zoo", "export", "triton_repo", "bench"):
        for path in (REPO_ROOT / package).rglob("*.py"):
            if "ArgumentParser(" in path.read_text(encoding="utf-8") and path.name != "cli_help.py":
                defining.add(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts))
    assert defining - covered == set(), f"CLIs without a --help test: {sorted(defining - covered)}"


# ------------------------------------------------------------------------------------------ the formatter


def _format(*arguments: tuple[tuple[str, ...], dict[str, Any]], description: str = "d") -> str:
    parser = argparse.ArgumentParser(prog="p", description=description, formatter_class=HelpFormatter)
    for args, kwargs in arguments:
        parser.add_argument(*args, **kwargs)
    return parser.format_help()


def test_formatter_appends_defaults_worth_stating():
    text = _format((("--port",), dict(type=int, default=8001)),
                   (("--host",), dict(default="127.0.0.1", help="listen address")),
                   (("--sizes",), dict(type=int, nargs="+", default=[1, 7])))
    assert option_section(text, "--port") == "--port PORT (default: 8001)"
    assert option_section(text, "--host") == "--host HOST listen address (default: 127.0.0.1)"
    assert "(default: [1, 7])" in option_section(text, "--sizes")


def test_formatter_skips_uninformative_and_hand_written_defaults():
    text = _format((("--flag",), dict(action="store_true", help="a switch")),
                   (("--maybe",), dict(default=None, help="optional")),
                   (("--many",), dict(action="append", default=[], help="repeat")),
                   (("--out",), dict(default="/abs/out", help="where (default: ./out next to the input)")),
                   (("--n",), dict(type=int, default=3, help="count (default %(default)s)")))
    assert "(default: False)" not in text and "(default: None)" not in text and "(default: [])" not in text
    assert option_section(text, "--out") == "--out OUT where (default: ./out next to the input)"
    assert option_section(text, "--n") == "--n N count (default 3)"


def test_formatter_keeps_preformatted_descriptions_and_wraps_paragraphs():
    usage = "Do a thing.\n\n    python -m thing --a 1\n                    [--b 2]\n"
    assert "    python -m thing --a 1\n                    [--b 2]" in _format(description=usage)
    wrapped = _format(description="word " * 40)
    assert max(len(line) for line in wrapped.splitlines()) < 100
