"""``docs/cli.md``, generated from the argument parser so the reference cannot drift from it.

``python -m autoprune.cli.docs`` prints the page (``make docs`` writes it); ``tests/test_docs.py``
fails when the committed file differs. Every verb gets its help line and a table of its
arguments with their help strings, which state the defaults (:mod:`autoprune.cli.parser`).
"""

from __future__ import annotations

import argparse

from autoprune.cli.parser import build_parser

HEADER = """\
# CLI reference

Generated from autoprune's argument parser (`make docs`; a test fails when this page is
stale). `autoprune VERB --help` prints the same. Task-oriented examples of each verb are in
the [guide](guide.md) and the [README's quick start](../README.md#quick-start).
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _argument(action: argparse.Action) -> str:
    if not action.option_strings:  # a positional
        name = action.metavar or action.dest.upper()
        return f"`{name}`" + (" (optional)" if action.nargs == "?" else "")
    flags = ", ".join(action.option_strings)
    if action.nargs == 0:  # store_true and friends take no value
        return f"`{flags}`"
    if action.choices:
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        value = str(action.metavar or action.dest.upper())
    return f"`{flags} {value}`"


def _verbs(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help or "" for choice in sub._choices_actions}
    return [(name, helps.get(name, ""), p) for name, p in sub.choices.items()]


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The markdown page for ``parser`` (autoprune's own by default)."""
    parser = parser or build_parser()
    verbs = _verbs(parser)
    lines = [HEADER, "| command | what it does |", "|---|---|"]
    lines += [f"| [`{name}`](#{name}) | {_cell(text)} |" for name, text, _ in verbs]
    for name, text, p in verbs:
        lines += ["", f"## {name}", "", text[:1].upper() + text[1:] + "."]
        rows = [
            a
            for a in p._actions
            if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
        ]
        if not rows:
            lines += ["", "No arguments."]
            continue
        lines += ["", "| argument | meaning |", "|---|---|"]
        lines += [f"| {_cell(_argument(a))} | {_cell(a.help or '')} |" for a in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
