"""The verb registry of the command line, its usage error, and the table printer every verb uses.

Light on purpose (nothing beyond the standard library and ``errors``): the verb modules register
themselves here when ``cli/__init__.py`` imports them, before any argument is parsed.
"""
from __future__ import annotations

from typing import Callable, Dict

from .. import errors

VERBS: Dict[str, Callable] = {}
"""Sub-command name -> ``function(args)``, in the order they are listed by ``--help``."""


def verb(name: str, help: str, arguments: Callable):
    """Register ``function(args)`` as sub-command ``name``; ``arguments(parser)`` adds its options."""
    def decorate(function):
        function.verb_help = help
        function.arguments = arguments
        VERBS[name] = function
        return function
    return decorate


class UsageError(errors.VOneNetError):
    """A command-line argument that cannot work, found before any work starts; the message names the flag."""


def print_table(header, rows) -> None:
    """Columns padded to their widest cell, a rule under the header."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]

    def line(values):
        return '  '.join(str(v).ljust(w) for v, w in zip(values, widths)).rstrip()
    print(line(header))
    print(line(['-' * w for w in widths]))
    for row in rows:
        print(line(row))
