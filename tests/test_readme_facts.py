"""README facts that are data or defaults: each checked against its source, independently written out.

Version ranges, commitments, download limits, corruption groups, the back-end registry and the rule
that library code never prints. Each test fails when the README's statement stops being true.
"""
import ast
import json
import re
from importlib.metadata import requires
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'vonenet_brainscore'


# --- install: ranges in setup.py, one tested point in constraints.txt -----------------------------------
def _pins():
    pins = {}
    for line in (ROOT / 'constraints.txt').read_text().splitlines():
        line = line.split('#')[0].strip()
        if '==' in line:
            name, version = line.split('==')
            pins[name.strip().lower().replace('_', '-')] = version.strip()
    return pins


def test_setup_declares_the_readme_ranges_and_constraints_pin_a_point_inside_them():
    from packaging.requirements import Requirement
    from vonenet_brainscore import dependencies
    installed = {Requirement(r).name.lower(): str(Requirement(r).specifier)
                 for r in requires('vonenet-brainscore') if 'extra ==' not in r}
    declared = {Requirement(r).name.lower(): str(Requirement(r).specifier) for r in dependencies.INSTALL_REQUIRES}
    assert installed == declared  # setup.py reads the one table
    readme = {'torch': ['>=2.6'], 'torchvision': ['>=0.21'], 'brainscore-vision': ['>=2.4', '<3'],
              'numpy': ['<2'], 'opencv-python': ['<4.12']}
    for name, bounds in readme.items():
        assert set(bounds) <= set(declared[name].split(',')), (name, declared[name])
    pins = _pins()
    assert pins['torch'] == '2.14.1' and pins['torchvision'] == '0.29.1' and pins['brainscore-vision'] == '2.4.2'
    for name, specifier in dependencies.SUPPORTED.items():
        requirement = Requirement(name + specifier)
        key = name.lower()
        assert key in pins, f'{name} is not pinned in constraints.txt'
        assert requirement.specifier.contains(pins[key], prereleases=True), (name, specifier, pins[key])


# --- commitments ---------------------------------------------------------------------------------------
EXPECTED_REGIONS = {  # README "Brain models": V1 = vone_block; the back-end stages per architecture
    'resnet50': {'V1': 'vone_block', 'V2': 'model.layer2', 'V4': 'model.layer3', 'IT': 'model.layer4'},
    'resnet50_at': {'V1': 'vone_block', 'V2': 'model.layer2', 'V4': 'model.layer3', 'IT': 'model.layer4'},
    'resnet50_ns': {'V1': 'vone_block', 'V2': 'model.layer2', 'V4': 'model.layer3', 'IT': 'model.layer4'},
    'alexnet': {'V1': 'vone_block', 'V2': 'model.features.2', 'V4': 'model.features.6', 'IT': 'model.features.9'},
    'cornets': {'V1': 'vone_block', 'V2': 'model.V2.output', 'V4': 'model.V4.output', 'IT': 'model.IT.output'},
}


@pytest.mark.parametrize('model', sorted(EXPECTED_REGIONS))
def test_each_commitment_file_holds_the_readme_facts_with_a_rationale(model):
    data = json.loads((ROOT / 'commitments' / f'{model}.json').read_text())
    assert {region: entry['layer'] for region, entry in data['regions'].items()} == EXPECTED_REGIONS[model]
    assert all(entry['rationale'].strip() for entry in data['regions'].values())
    assert data['visual_degrees'] == 8 and data['visual_degrees_rationale'].strip()
    assert data['preprocessing']['image_size'] == 224
    assert data['preprocessing']['normalize_mean'] == [0.5] * 3 == data['preprocessing']['normalize_std']
    assert data['preprocessing']['rationale'].strip()
    assert data['behavioral_readout_layer'] and data['behavioral_readout_rationale'].strip()
    assert (data['time_bins'] is not None) == (model == 'cornets')


def test_the_alternative_map_is_brainscores_bundled_voneresnet50_map():
    import brainscore_vision
    bundled = Path(brainscore_vision.__file__).parent / 'models' / 'voneresnet_50' / 'region_layer_map' / 'voneresnet-50.json'
    ours = json.loads((ROOT / 'commitments' / 'resnet50.json').read_text())['alternative_region_maps']['voneresnet-50']
    assert ours['regions'] == json.loads(bundled.read_text())


# --- downloads -----------------------------------------------------------------------------------------
def test_download_limits_are_the_readme_defaults():
    import inspect
    from vonenet_brainscore.published import download
    defaults = {name: parameter.default for name, parameter in inspect.signature(download.download_file).parameters.items()}
    assert defaults['stall_timeout'] == 60           # no progress for 60 s
    assert defaults['total_timeout'] == 2 * 3600     # 2 h in all
    assert defaults['max_bytes'] == 2 * 1024 ** 3    # 2 GiB
    assert download.STALE_PART_SECONDS == 3600       # a .part that has not grown for an hour


# --- robustness ----------------------------------------------------------------------------------------
def test_the_corruption_set_is_imagenet_c():
    from vonenet_brainscore.robustness import corruptions
    imagenet_c = {'gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur', 'motion_blur',
                  'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast', 'elastic_transform', 'pixelate',
                  'jpeg_compression'}  # Hendrycks & Dietterich 2019, the 15 test corruptions
    assert len(corruptions.COMMON_CORRUPTIONS) == 15 and set(corruptions.COMMON_CORRUPTIONS) == imagenet_c
    assert set(corruptions.BLUR_CORRUPTIONS) >= {'defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur'}
    assert set(corruptions.ALL_CORRUPTIONS) == imagenet_c | set(corruptions.EXTRA_CORRUPTIONS)


# --- back-ends -----------------------------------------------------------------------------------------
def test_a_new_backend_is_one_decorated_constructor():
    from torch import nn
    from vonenet_brainscore import build_vonenet
    from vonenet_brainscore.backends import registry

    class Tiny(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(64, num_classes)

        def forward(self, x):
            return self.fc(self.pool(x).flatten(1))

    name = 'readme-tiny-backend'
    try:
        registry.register_backend(name)(lambda num_classes=1000, **_: Tiny(num_classes))
        assert name in registry.list_backends()
        network = build_vonenet(name, num_classes=7, noise_mode=None, simple_channels=8, complex_channels=8)
        import torch
        with torch.no_grad():
            assert network(torch.zeros(1, 3, 64, 64)).shape == (1, 7)
        with pytest.raises(ValueError, match='registered twice'):
            registry.register_backend(name)(Tiny)
    finally:
        registry._BACKENDS.pop(name, None)


# --- library code ----------------------------------------------------------------------------------------
def test_library_code_never_prints():
    """Only the command line writes to stdout; the library logs (README "Architecture")."""
    offenders = []
    for path in sorted(PACKAGE.rglob('*.py')):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == 'cli.py' or relative.parts[0] == 'cli':
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'print':
                offenders.append(f'{relative}:{node.lineno}')
    assert not offenders, offenders


def test_the_readme_verb_table_lists_every_cli_verb():
    from vonenet_brainscore.cli import build_parser
    readme = (ROOT / 'README.md').read_text()
    table = readme[readme.index('| verb | job |'):readme.index('## Models and weights')]
    listed = set(re.findall(r'^\| `([a-z-]+)', table, flags=re.M))
    parser = build_parser()
    verbs = next(action for action in parser._actions if action.__class__.__name__ == '_SubParsersAction').choices
    assert listed == set(verbs)


def test_mapping_reduces_layers_to_1000_components_by_default():
    """README: layers with many features are reduced to 1000 principal components, as Brain-Score's
    layer selection does."""
    import inspect
    from vonenet_brainscore.scoring import mapping
    for function in (mapping.map_layers, mapping.extract_features):
        assert inspect.signature(function).parameters['n_components'].default == 1000
    features = np.random.default_rng(0).normal(size=(1200, 1500)).astype(np.float32)
    reduced, _ = mapping.principal_components(features, 1000)
    assert reduced.shape == (1200, 1000)


def test_training_uses_the_original_augmentation():
    """README: training uses random resized crops and horizontal flips, at 224 px, normalised with 0.5."""
    from torchvision import transforms
    from vonenet_brainscore.training.data import training_transform
    steps = training_transform().transforms
    assert [type(step) for step in steps] == [transforms.RandomResizedCrop, transforms.RandomHorizontalFlip,
                                              transforms.ToTensor, transforms.Normalize]
    assert tuple(steps[0].size) == (224, 224) and steps[1].p == 0.5
    assert list(steps[3].mean) == [0.5] * 3 == list(steps[3].std)
