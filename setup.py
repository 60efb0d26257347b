"""Install vonenet-brainscore: VOneNets as Brain-Score brain models."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


setup(
    name='vonenet-brainscore',
    version='0.1.0',
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
                  'vonenet_brainscore': ['plugin/*', 'plugin/*/*', 'v1_properties/*.json', 'vone/*.c']},
    install_requires=[
        'torch==2.14.1',
        'torchvision==0.29.1',
        'brainscore-vision==2.4.2',
        'opencv-python<4.12',
        'numpy<2',
        'scipy',
        'xarray',
        'pandas',
        'tqdm',
        'requests',
        'filelock',
        'matplotlib',
        # ImageNet-C corruptions; robustness/corruptions.py adapts it to current setuptools and scikit-image
        'imagecorruptions==1.1.2',
    ],
    extras_require={'test': ['pytest', 'pytest-check']},
    entry_points={'console_scripts': ['vonenet-brainscore=vonenet_brainscore.cli:main']},
)
