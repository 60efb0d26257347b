"""Write a Brain-Score submission zip: ``<root>/models/<plugin>/...`` with explicit folder entries.

Part of ``submission/`` (brain-score.org's upload rules and the zips): ``website`` checks what this
module writes. The website finds plugin types and plugins by their folder entries (names ending in
``/``), so every folder gets one, the root first. Timestamps and permissions are fixed, so the same
files give the same zip, byte for byte. The zip is written through ``paths.write_atomically``: the
destination is either the complete new zip or untouched.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import BinaryIO, Dict

from ..errors import SubmissionError
from ..paths import write_atomically

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _entries(root: str, plugin: str, files: Dict[str, bytes]) -> Dict[str, bytes]:
    """Every zip entry, folders (value None) included, keyed by its full name."""
    prefix = f'{root}/models/{plugin}/'
    entries: Dict[str, bytes] = {f'{root}/': None, f'{root}/models/': None, prefix: None}
    for relative, content in files.items():
        parts = relative.split('/')
        for depth in range(1, len(parts)):
            entries[prefix + '/'.join(parts[:depth]) + '/'] = None
        entries[prefix + relative] = content
    return dict(sorted(entries.items()))  # a folder sorts before everything inside it


def checked_destination(out_zip) -> Path:
    """``out_zip`` as a Path, if it can name a zip to write: a .zip file name that is not a folder."""
    out_zip = Path(out_zip)
    if out_zip.suffix.lower() != '.zip':
        raise SubmissionError(f"{out_zip}: the submission file name must end in .zip")
    if out_zip.is_dir():
        raise SubmissionError(f"{out_zip} is a folder; give the path of the zip file to write")
    return out_zip


def write_zip(out_zip, root: str, plugin: str, files: Dict[str, bytes]) -> Path:
    """Write ``files`` (paths inside the plugin folder) as ``root/models/plugin/...`` into ``out_zip``."""
    out_zip = checked_destination(out_zip)
    try:
        out_zip.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(out_zip, lambda stream: _write_entries(stream, _entries(root, plugin, files)), mode=0o644)
    except OSError as error:
        raise SubmissionError(f"could not write the submission {out_zip}: {error}") from error
    return out_zip


def _write_entries(stream: BinaryIO, entries: Dict[str, bytes]) -> None:
    """The zip of ``entries`` (None: a folder) with fixed dates and permissions."""
    with zipfile.ZipFile(stream, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            if content is None:
                info.external_attr = (0o40755 << 16) | 0x10  # a folder, rwxr-xr-x
                archive.writestr(info, b'')
            else:
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, content)
