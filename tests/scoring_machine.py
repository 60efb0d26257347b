"""A simulated Brain-Score scoring machine: a fresh virtualenv that has torch, torchvision and
brainscore-vision but not vonenet-brainscore, with a submission zip unpacked into its
``brainscore_vision/models/``, as Brain-Score's pipeline places a submitted plugin.

Installing the 6.5 GB stack again would take minutes and the network, so the fresh environment's
site-packages links to this test environment's installed distributions, one entry at a time, leaving
out vonenet-brainscore (its package, its editable-install hooks and its metadata). brainscore_vision
itself is an overlay: a real folder whose entries link to the installed ones, except ``models/``,
a real folder of links to the bundled plugins, so unpacking a plugin there changes nothing outside
the temporary folder. ``pip`` on the machine's PATH is a wrapper that logs every call Brain-Score
makes and passes it to the environment's pip with ``--no-index``: requirements must already
be satisfied, and nothing can be downloaded or replaced through the links.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator

LEFT_OUT = ('vonenet_brainscore', 'vonenet-brainscore', '__editable__')
"""Site-packages entries not linked: our package in every form (code, metadata, editable-install hooks)."""


@dataclass
class ScoringMachine:
    root: Path
    python: Path
    site_packages: Path
    models_dir: Path
    pip_log: Path

    def env(self, **extra: str) -> Dict[str, str]:
        """The environment a scoring run sees: nothing of this test process's package paths."""
        home = self.root / 'home'
        home.mkdir(exist_ok=True)
        env = {'PATH': f"{self.root / 'wrapped-bin'}{os.pathsep}{self.python.parent}{os.pathsep}/usr/bin:/bin",
               'HOME': str(home), 'BS_INSTALL_DEPENDENCIES': 'yes', 'AWS_EC2_METADATA_DISABLED': 'true',
               'RESULTCACHING_DISABLE': '1', 'VONENET_BRAINSCORE_HOME': str(self.root / 'vonenet-cache'),
               'PIP_DISABLE_PIP_VERSION_CHECK': '1', 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '2'}
        env.update(extra)
        return env

    def run(self, args, *, env: Dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.python), *map(str, args)], cwd=self.root, env=env, capture_output=True,
                              text=True, timeout=timeout)

    def unpack(self, zip_path: Path) -> Path:
        """Copy ``<root>/models/<plugin>/`` of a submission zip into the machine's models folder."""
        with zipfile.ZipFile(zip_path) as archive:
            names = archive.namelist()
            root = names[0].split('/')[0]
            plugin = names[2].split('/')[2]
            prefix = f'{root}/models/{plugin}/'
            for name in names:
                if name.startswith(prefix) and not name.endswith('/'):
                    target = self.models_dir / plugin / name[len(prefix):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(name))
        return self.models_dir / plugin


def _installed_site_packages() -> Path:
    return Path(sysconfig.get_paths()['purelib'])


def make_scoring_machine(root: Path, with_our_package: bool = False) -> ScoringMachine:
    """A fresh environment as described above; ``with_our_package`` links vonenet-brainscore in as well
    (this test environment's install of it, editable or not), for testing a local ``plugin install``."""
    root.mkdir(parents=True, exist_ok=True)
    venv = root / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True, capture_output=True, timeout=300)
    python = venv / 'bin' / 'python'
    site = Path(subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                               check=True, capture_output=True, text=True).stdout.strip())
    source = _installed_site_packages()
    for entry in sorted(source.iterdir()):
        if entry.name == 'brainscore_vision' or (not with_our_package and entry.name.startswith(LEFT_OUT)):
            continue
        if entry.suffix == '.pth':  # processed only in site-packages itself: copy, do not link
            if with_our_package or not entry.name.startswith(LEFT_OUT):
                shutil.copyfile(entry, site / entry.name)
            continue
        (site / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    brainscore = source / 'brainscore_vision'
    overlay = site / 'brainscore_vision'
    overlay.mkdir()
    for entry in brainscore.iterdir():
        if entry.name != 'models':
            (overlay / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    models = overlay / 'models'
    models.mkdir()
    for entry in (brainscore / 'models').iterdir():
        if entry.name != '__pycache__':
            (models / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    wrapped = root / 'wrapped-bin'
    wrapped.mkdir()
    pip_log = root / 'pip-calls.log'
    wrapper = wrapped / 'pip'
    wrapper.write_text(f'#!/bin/sh\n"{python}" -m pip "$@" --no-index\nstatus=$?\n'
                       f'echo "pip $* -> exit $status" >> "{pip_log}"\nexit $status\n')
    wrapper.chmod(0o755)
    return ScoringMachine(root=root, python=python, site_packages=site, models_dir=models, pip_log=pip_log)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """An HTTP server on the loopback interface serving ``folder``; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}/'
    finally:
        server.shutdown()
        server.server_close()


def copy_generic_plugin_tests(folder: Path) -> Path:
    """A verbatim copy of Brain-Score's generic plugin tests (and their conftest), beside the three
    images they look for in ``generic_plugin_tests_resources/`` (the wheel lacks them)."""
    import numpy as np
    from PIL import Image
    from brainscore_vision.model_helpers import generic_plugin_tests
    resources = folder / 'generic_plugin_tests_resources'
    resources.mkdir(parents=True)
    shutil.copyfile(generic_plugin_tests.__file__, folder / 'generic_plugin_tests.py')
    shutil.copyfile(Path(generic_plugin_tests.__file__).parent / 'conftest.py', folder / 'conftest.py')
    rng = np.random.default_rng(0)
    for name in ('rgb1.jpg', 'rgb2.jpg', 'rgb3.png'):
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), 'RGB').save(resources / name)
    (folder / 'pytest.ini').write_text('[pytest]\nmarkers =\n    travis_slow\n    memory_intense\n    slow\n'
                                       '    requires_gpu\n')
    return folder
