"""Command-line interface: ``autoprune VERB ...``.

:mod:`.parser` holds every verb's arguments, :mod:`.verbs` one function per verb, and
:mod:`.tables` how results are printed. :func:`main` parses, runs the verb, and turns a
:class:`~autoprune.errors.UserError` into one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from autoprune.cli.parser import build_parser
from autoprune.cli.verbs import VERBS
from autoprune.errors import UserError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    try:
        return VERBS[args.verb](args) or 0
    except UserError as exc:
        print(f"autoprune {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
