"""``vonenet-brainscore``: the command line, the top floor of the package. One verb per job, one module
per group of verbs, each thin: parse, call the library, print (and plot).

``registry`` (the verbs, ``UsageError``, the table printer) and ``arguments`` (argument types, file and
folder checks) import nothing heavy, so the parser is built and ``--help`` answered without torch;
``models`` (models, info, classify), ``scoring`` (score, map-layers), ``training`` (validate, train),
``robustness`` and ``plugins`` (plugin, submission) import the library inside each verb.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Iterator

# Brain-Score otherwise pip-installs plugin requirements into whatever Python is on PATH, and probes
# cloud metadata for ~90 s before any S3 failure: the CLI process never does either (see brainscore_env).
from .. import errors
from ..brainscore_env import set_process_defaults
from .registry import VERBS, UsageError, verb  # noqa: F401 (the command line's public names)
from . import models, scoring, training, robustness, plugins  # noqa: F401,E402 (each registers its verbs, in this order)

set_process_defaults()


@contextlib.contextmanager
def _progress_bars_off() -> Iterator[None]:
    """--quiet: no progress bar from anyone, Brain-Score's (activations, cross-validation, ...) included.

    Every tqdm bar is created disabled while the command runs (tqdm reads TQDM_DISABLE only when it
    is first imported, which happened before the arguments were parsed); the environment variable is
    also set for processes started meanwhile. Both are undone afterwards.
    """
    import tqdm.std
    saved_init, saved_env = vars(tqdm.std.tqdm)['__init__'], os.environ.get('TQDM_DISABLE')
    configured_init = tqdm.std.tqdm.__init__

    def disabled_init(self, *args, **kwargs):
        kwargs['disable'] = True
        configured_init(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = disabled_init
    os.environ['TQDM_DISABLE'] = '1'
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = saved_init
        if saved_env is None:
            os.environ.pop('TQDM_DISABLE', None)
        else:
            os.environ['TQDM_DISABLE'] = saved_env


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='vonenet-brainscore', description='VOneNets as Brain-Score brain models: '
                                     'build, classify, score, submit, validate, train, test robustness.')
    parser.add_argument('-v', '--verbose', action='store_true', help='log progress details')
    sub = parser.add_subparsers(dest='verb', metavar='VERB', required=True)
    for name, function in VERBS.items():
        verb_parser = sub.add_parser(name, help=function.verb_help, description=function.verb_help)
        function.arguments(verb_parser)
        verb_parser.set_defaults(run=function)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # argparse has printed usage and the error (exit 2), or --help (exit 0)
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 2)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s')
    try:
        with _progress_bars_off() if getattr(args, 'quiet', False) else contextlib.nullcontext():
            args.run(args)
    except errors.VOneNetError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
