"""Brain-Score settings that our own calls into Brain-Score need, applied per call, never at import.

On the foundation floor: scoring wraps its ``load_benchmark``/``load_model`` calls in
:func:`offline_defaults`; the command line calls :func:`set_process_defaults` once.

Brain-Score's plugin loader pip-installs a plugin's requirements unless ``BS_INSTALL_DEPENDENCIES=no``
(into whatever ``pip`` is first on PATH), and boto probes cloud metadata for about 90 s before any S3
failure unless ``AWS_EC2_METADATA_DISABLED=true``. Setting them at import would change how a Brain-Score
scoring machine that imports our plugin loads every plugin after ours, so library code sets them only
around its own ``load_benchmark`` calls; the command line sets them for its whole process.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Dict, Iterator

OFFLINE_DEFAULTS: Dict[str, str] = {'BS_INSTALL_DEPENDENCIES': 'no', 'AWS_EC2_METADATA_DISABLED': 'true'}


def set_process_defaults() -> None:
    """For entry points (the CLI): apply the defaults to this process unless the user set them."""
    for name, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(name, value)


@contextmanager
def offline_defaults() -> Iterator[None]:
    """The defaults (where the user has not set a value) for the duration of one call, then restored."""
    added = [name for name in OFFLINE_DEFAULTS if name not in os.environ]
    for name in added:
        os.environ[name] = OFFLINE_DEFAULTS[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)
