"""The version ranges this package supports: one table for setup.py and for a plugin's requirements.txt.

Pure data (no imports), so setup.py can read it before anything is installed. The ranges say what we
support, not what we tested: the exact tested stack is ``constraints.txt`` at the top of the repository.
Lower bounds of torch, torchvision and numpy are brainscore-vision 2.4's own, so any environment that
runs Brain-Score already satisfies them and a plugin install never replaces its torch.
"""

VERSION = '0.1.0'
"""This package's version (setup.py and the package's ``__version__`` read it here)."""

SUPPORTED = {
    'torch': '>=2.6,<3',
    'torchvision': '>=0.21',
    'brainscore-vision': '>=2.4,<3',
    'brainscore-core': '>=2.4,<3',
    'numpy': '>=1.21,<2',        # brainscore-vision needs numpy < 2
    'scipy': '>=1.7',
    'pandas': '>=1.3',
    'xarray': '>=0.20',
    'pillow': '>=9',
    'requests': '>=2.20',
    'filelock': '>=3.4',
    'tqdm': '>=4.40',
    'result-caching': '>=0.4',  # Brain-Score's activation cache (a brainscore-vision dependency)
    'urllib3': '>=1.26',
    'matplotlib': '>=3.5',
    'opencv-python': '>=4.5,<4.12',  # newer releases need numpy 2 and make pip backtrack
    'imagecorruptions': '>=1.1.2,<1.2',  # ImageNet-C; robustness/corruptions.py adapts 1.1.2 to current scikit-image
}
"""PyPI name -> range, for everything this package imports outside the standard library."""

IMPORT_TO_DISTRIBUTION = {
    'torch': 'torch', 'torchvision': 'torchvision', 'brainscore_vision': 'brainscore-vision',
    'brainscore_core': 'brainscore-core', 'numpy': 'numpy', 'scipy': 'scipy', 'pandas': 'pandas',
    'xarray': 'xarray', 'PIL': 'pillow', 'requests': 'requests', 'urllib3': 'urllib3', 'filelock': 'filelock', 'tqdm': 'tqdm',
    'matplotlib': 'matplotlib', 'result_caching': 'result-caching', 'cv2': 'opencv-python', 'imagecorruptions': 'imagecorruptions',
}
"""Top-level import name -> the PyPI distribution that provides it."""

INSTALL_REQUIRES = [name + SUPPORTED[name] for name in (
    'torch', 'torchvision', 'brainscore-vision', 'numpy', 'opencv-python', 'scipy', 'xarray', 'pandas', 'pillow',
    'tqdm', 'requests', 'filelock', 'matplotlib', 'imagecorruptions')]
"""What ``pip install vonenet-brainscore`` asks for."""
