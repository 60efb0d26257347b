"""The command line parses its arguments before anything heavy is imported, so `--help` starts at once.
(How fast is measured by benchmarks/cli_start.py; this checks the cause: no heavy import.)"""
import subprocess
import sys

import pytest

HEAVY = ('torch', 'torchvision', 'brainscore_vision', 'brainscore_core', 'numpy', 'xarray', 'scipy', 'PIL')
PROBE = '''
import sys
from vonenet_brainscore import cli
code = cli.main(sys.argv[1:])
print(sorted(name for name in {heavy!r} if name in sys.modules), file=sys.stderr)
'''.format(heavy=HEAVY)


@pytest.mark.parametrize('argv', [['--help'], ['score', '--help'], ['train', '--help'], ['robustness', '--help'],
                                  ['validate', '--help'], ['submission', '--help'], ['map-layers', '--help'],
                                  ['classify', '--help'], ['plugin', '--help']])
def test_help_imports_nothing_heavy(argv):
    done = subprocess.run([sys.executable, '-c', PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'usage: vonenet-brainscore' in done.stdout
    assert done.stderr.strip().splitlines()[-1] == '[]', done.stderr


def test_the_package_imports_torch_only_when_a_model_is_asked_for():
    probe = ('import sys, vonenet_brainscore as vb\nprint("torch" in sys.modules)\n'
             'vb.VOneBlock\nprint("torch" in sys.modules)\nprint(vb.get_model.__module__, vb.__version__)')
    done = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ['False', 'True', 'vonenet_brainscore.published.catalogue', '0.1.0']
