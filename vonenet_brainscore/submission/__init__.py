"""Brain-Score submissions, the floor above the uses of a model: one self-contained zip per model, and
the website's upload check run locally.

A submitted plugin cannot rely on this package being installed where Brain-Score scores it (it is not
on PyPI), so ``build_submission`` renders the plugin from the package at build time with the code it
needs inside (``brain.plugin.files`` and ``brain.plugin.vendoring``) and writes the zip (``archive``).
``check_submission`` applies the website's rules (``website``); ``build_submission`` refuses to write a
zip that breaks them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

from ..brain.plugin.files import render_plugin
from ..errors import SubmissionError
from ..published.naming import list_identifiers, resolve
from .archive import checked_destination, write_zip
from .website import check_submission, load_taken_names

__all__ = ['build_submission', 'build_all_submissions', 'check_submission', 'render_plugin', 'load_taken_names',
           'SUBMISSION_ROOT']


SUBMISSION_ROOT = 'submission'
"""The zip's single top-level folder: the structure the upload page asks for, submission/models/<identifier>/."""


def build_submission(model: str, out_zip) -> Path:
    """Write the upload zip for one brain model (``vonenet_resnet50``, or a catalogue name such as
    ``resnet50``) and return its path. The zip is checked with the website's rules before it is kept."""
    identifier = resolve(model)
    out_zip = checked_destination(out_zip)
    # built and checked beside its destination, then renamed: a zip that breaks the rules never
    # replaces an earlier one at that path
    candidate = out_zip.with_name(f'.{out_zip.stem}.candidate.zip')
    try:
        write_zip(candidate, SUBMISSION_ROOT, identifier, render_plugin([identifier], carry_code=True))
        problems = check_submission(candidate)
        if problems:
            raise SubmissionError(f"the zip built for {identifier} breaks the website's rules (nothing written "
                                  f"to {out_zip}): " + '; '.join(problems))
        os.replace(candidate, out_zip)
    finally:
        if candidate.exists():
            candidate.unlink()
    return out_zip


def build_all_submissions(folder) -> List[Path]:
    """One zip per brain-model identifier, ``<folder>/<identifier>.zip``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SubmissionError(f"--all {folder}: it is a file; give a folder to write one zip per model into")
    return [build_submission(identifier, folder / f'{identifier}.zip') for identifier in list_identifiers()]
