"""Argument types and file/folder checks shared by the verbs: every bad value is refused before work starts.

Light on purpose: the parser is built (and ``--help`` answered) without torch or numpy.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Sequence

from .registry import UsageError


def _number(kind, low=None, high=None, *, low_open: bool = False, what: str):
    """An argparse ``type``: a ``kind`` (int or float) within [low, high] (``low_open``: above low)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) \
                or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    parse.__name__ = what  # argparse names the type by it
    return parse


POSITIVE_INT = _number(int, 1, what='a positive integer (1 or more)')
COUNT = _number(int, 0, what='an integer >= 0')
SEED = _number(int, 0, 2 ** 32 - 1, what='an integer seed in 0 .. 4294967295')
POSITIVE_FLOAT = _number(float, 0, low_open=True, what='a number > 0')
NON_NEGATIVE_FLOAT = _number(float, 0, what='a number >= 0')
SEVERITY = _number(int, 1, 5, what='a corruption severity in 1 .. 5')


def image_size_type():
    """Image sizes the VOneBlock accepts (the limits in ``constants``)."""
    from ..constants import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
    return _number(int, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE,
                   what=f'an image size in pixels, {MIN_IMAGE_SIZE} .. {MAX_IMAGE_SIZE}')


def _writable_location(flag: str, path: Path, folder: Path) -> None:
    """``path`` (given to ``flag``) can be written in or under ``folder``: its nearest existing ancestor
    is a folder in which a file can be made (tried for real: permissions, read-only file systems, root)."""
    from ..paths import writable_problem
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {path} cannot be created: {existing} is a file, not a folder; choose another "
                         f"location")
    problem = writable_problem(existing)
    if problem:
        raise UsageError(f"{flag} {path} cannot be written: making a file in {existing} fails ({problem}); choose "
                         f"a writable location")


def output_file(flag: str, path, suffix: str, about: str = '') -> Path:
    """Check now, not after the run, that the file ``path`` given to ``flag`` can be written."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}{about} is an existing folder; {flag} takes a file name ending in {suffix}, "
                         f"e.g. {path / ('results' + suffix)}")
    if path.suffix.lower() != suffix:
        raise UsageError(f"{flag} {path}{about} does not end in {suffix}; the file is written as "
                         f"{suffix[1:].upper()}, name it so, e.g. {path.with_suffix(suffix)}")
    _writable_location(flag, path, path.parent)
    if path.exists():
        try:
            open(path, 'ab').close()  # appends nothing: only asks whether it could be rewritten
        except OSError as error:
            raise UsageError(f"{flag} {path}{about} exists and cannot be rewritten ({error.strerror}); choose "
                             f"another name or fix its permissions") from None
    return path


def output_dir(flag: str, path, files: Sequence[str] = (), about: str = '') -> Path:
    """Check now that ``path`` can be the folder (created if missing) that ``files`` are written into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}{about} is an existing file; {flag} takes a folder (created if missing), "
                         f"e.g. {path.with_suffix('') if path.suffix else path.parent / (path.name + '_out')}")
    for name in files:
        if (path / name).is_dir():
            raise UsageError(f"{flag} {path}{about}: {path / name} is a folder where the file {name} is to be "
                             f"written; move it away or choose another {flag}")
    _writable_location(flag, path, path)
    return path


def input_file(flag: str, path, folder_ok: bool = False) -> Path:
    """An existing file (or folder, with ``folder_ok``) given to ``flag``."""
    path = Path(path)
    if not path.exists():
        broken = ' (a symbolic link to a missing file)' if path.is_symlink() else ''
        raise UsageError(f"{flag} {path} does not exist{broken}; check the path")
    if path.is_dir() and not folder_ok:
        inside = sorted(p.name for p in path.iterdir() if p.name.endswith(('.pth', '.pth.tar', '.pt', '.tar')))
        raise UsageError(f"{flag} {path} is a folder; {flag} takes a checkpoint file"
                         + (f", e.g. one of these in it: {', '.join(inside[:5])}" if inside else
                            " (no .pth, .pth.tar or .pt file in it)"))
    return path


def write_json(path, record) -> None:
    """Write ``record`` as JSON to ``path`` (when given) and say so."""
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + '\n')
        print(f'wrote {path}')


def write_csv(path: Path, records) -> None:
    """One row per record, the columns those of the first."""
    import csv
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='') as file:
        writer = csv.DictWriter(file, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
