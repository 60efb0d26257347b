"""Install vonenet-brainscore: VOneNets as Brain-Score brain models."""
import runpy
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# Pure data, read without importing the package (nothing is installed yet).
DEPENDENCIES = runpy.run_path(str(HERE / 'vonenet_brainscore' / 'dependencies.py'))


setup(
    name='vonenet-brainscore',
    version=DEPENDENCIES['VERSION'],
    description='VOneNets (CNNs with a primate V1 front-end) as Brain-Score brain models',
    long_description=(HERE / 'README.md').read_text() if (HERE / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    license='GPL-3.0-or-later',
    python_requires='>=3.10',
    # The top-level commitments/ folder is installed as vonenet_brainscore.commitments, so the JSON
    # files are read from one place in a checkout and in an installed package alike.
    packages=find_packages(include=['vonenet_brainscore', 'vonenet_brainscore.*']) + ['vonenet_brainscore.commitments'],
    package_dir={'vonenet_brainscore.commitments': 'commitments'},
    include_package_data=True,
    package_data={'vonenet_brainscore.commitments': ['*.json'],
                  'vonenet_brainscore': ['LICENSE', 'scoring/v1_properties/*.json', 'vone/accel/*.c'],
                  'vonenet_brainscore.submission': ['*.json']},
    # Supported ranges; the exact tested stack is constraints.txt (pip install ... -c constraints.txt).
    install_requires=DEPENDENCIES['INSTALL_REQUIRES'],
    extras_require={'test': ['pytest', 'pytest-check']},
    entry_points={'console_scripts': ['vonenet-brainscore=vonenet_brainscore.cli:main']},
)
