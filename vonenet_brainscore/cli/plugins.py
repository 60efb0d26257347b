"""Verbs that hand our models to Brain-Score: ``plugin`` (the local install) and ``submission`` (the zips)."""
from __future__ import annotations

from .. import errors
from .registry import verb


def _plugin_arguments(parser):
    parser.add_argument('action', choices=['install', 'uninstall', 'status'])
    parser.add_argument('--models-dir', help="Brain-Score's models folder (default: the installed brainscore_vision's)")


@verb('plugin', "install or remove the local Brain-Score plugin (so brainscore_vision.load_model finds our models)",
      arguments=_plugin_arguments)
def plugin_command(args):
    from ..brain.plugin import install
    if args.action == 'install':
        print(f'installed: {install.install_plugin(models_dir=args.models_dir)}')
    elif args.action == 'uninstall':
        removed = install.uninstall_plugin(models_dir=args.models_dir)
        print('removed' if removed else 'not installed; nothing to remove')
    elif not install.is_installed(args.models_dir):
        print('not installed')
    else:
        print('installed' if install.is_current(args.models_dir)
              else 'installed, but out of date (another vonenet-brainscore version wrote it): run plugin install')


def _submission_arguments(parser):
    parser.add_argument('model', nargs='?', help='brain model identifier, e.g. vonenet_resnet50 (or resnet50)')
    parser.add_argument('out_zip', nargs='?', help='path of the zip to write (OUT.zip)')
    parser.add_argument('--all', metavar='DIR', help='write one zip per identifier into DIR')
    parser.add_argument('--check', nargs='+', metavar='ZIP', help="run the website's upload checks on these zips")


@verb('submission', "build (or --check) the zips Brain-Score's website accepts: one model per zip",
      arguments=_submission_arguments)
def submission_command(args):
    from .. import submission
    if args.check:
        _check_zips(args.check)
    elif args.all:
        for path in submission.build_all_submissions(args.all):
            print(f'wrote {path}')
    elif not args.model or not args.out_zip:
        raise errors.SubmissionError('give MODEL and OUT.zip (one zip per model), or --all DIR, or --check ZIP')
    else:
        print(f'wrote {submission.build_submission(args.model, args.out_zip)}')


def _check_zips(paths) -> None:
    """Each zip's broken rules, then its verdict; an error (exit 2) when any zip is refused."""
    from .. import submission
    failed = False
    for path in paths:
        problems = submission.check_submission(path)
        for problem in problems:
            print(f'{path}: {problem}')
        print(f'{path}: ' + ('REJECTED by the website\'s rules' if problems else 'passes the website\'s checks'))
        failed = failed or bool(problems)
    if failed:
        raise errors.SubmissionError('at least one zip breaks a rule of the upload check (listed above)')
