"""README claims checked against independent sources: torchvision written out by hand, hand-computed
accuracies, the paper's published settings, a fresh interpreter's environment."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

PAPER = {'steps': 64, 'step_fraction': 1 / 4, 'eot_draws': 8,
         'high': {'linf': 1 / 255, 'l2': 0.6, 'l1': 160.0}, 'low': {'linf': 1 / 1020, 'l2': 0.15, 'l1': 40.0}}
RECIPE = {'lr': 0.1, 'step_factor': 0.1, 'step_size': 20, 'epochs': 70, 'batch_size': 256, 'momentum': 0.9,
          'weight_decay': 1e-4}


def _image(path, size, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


# --- preprocessing: 224 px, mean = std = 0.5; validation: resize 256, centre crop 224 ----------------------------

def test_brain_model_input_is_the_whole_image_at_224_px_normalised_with_half(tmp_path):
    from vonenet_brainscore.preprocessing import brainscore_preprocessing
    paths = [_image(tmp_path / f'{i}.png', size, i) for i, size in enumerate([(300, 200), (224, 224), (97, 131)])]
    ours = np.asarray(brainscore_preprocessing(224)([str(p) for p in paths]))
    independent = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                                      transforms.Normalize([0.5] * 3, [0.5] * 3)])
    expected = torch.stack([independent(Image.open(p).convert('RGB')) for p in paths]).numpy()
    assert ours.shape == (3, 3, 224, 224)
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    assert ours.min() >= -1 and ours.max() <= 1 and ours.min() < -0.9 and ours.max() > 0.9  # (x - 0.5) / 0.5


def test_validation_resizes_the_short_side_to_256_and_crops_the_centre_224(tmp_path):
    from vonenet_brainscore.preprocessing import evaluation_transform
    path = _image(tmp_path / 'wide.png', (400, 300), 3)
    image = Image.open(path).convert('RGB')
    ours = evaluation_transform(224)(image)
    short = image.resize((341, 256), Image.BILINEAR)  # 400 x 300 -> 341 x 256 (short side 256)
    left, top = (341 - 224) // 2, (256 - 224) // 2
    crop = np.asarray(short, dtype=np.float32)[top:top + 224, left:left + 224] / 255
    expected = (crop.transpose(2, 0, 1) - 0.5) / 0.5
    assert tuple(ours.shape) == (3, 224, 224)
    # Pillow's resize with antialiasing (torchvision's default for PIL images) is the reference here.
    np.testing.assert_allclose(ours.numpy(), expected, atol=1.5 / 255)


# --- validation accuracy on a case with a hand-computable answer ------------------------------------------------

class _LookupModel(nn.Module):
    """Reads the class from an image's constant grey level and returns a fixed row of logits for it."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.unused = nn.Linear(1, 1)  # a parameter, so the model can be moved to a device

    def forward(self, images):
        grey = (images.mean(dim=(1, 2, 3)) * 0.5 + 0.5) * 255  # undo mean = std = 0.5
        return self.table[(grey / 30).round().long()]


def test_validate_top1_and_top5_equal_a_hand_count(tmp_path):
    from vonenet_brainscore.training.evaluate import validate
    classes = 8
    for k in range(classes):  # class k: one constant image of grey level 30 k
        folder = tmp_path / 'val' / f'class{k}'
        folder.mkdir(parents=True)
        Image.fromarray(np.full((64, 64, 3), 30 * k, dtype=np.uint8)).save(folder / 'a.png')
    # Row k holds the logits for class k's image; the true class's rank in each row:
    ranks = [1, 1, 1, 2, 5, 6, 8, 3]
    table = np.zeros((classes, classes))
    for k, rank in enumerate(ranks):
        order = [c for c in range(classes) if c != k]
        order.insert(rank - 1, k)
        table[k, order] = np.arange(classes, 0, -1)  # descending scores in that order
    result = validate(_LookupModel(table), tmp_path, batch_size=3, workers=0, progress=False, noise_seed=None)
    assert result['n_images'] == classes and result['topk'] == 5
    assert result['top1'] == pytest.approx(3 / 8)   # ranks 1, 1, 1
    assert result['top5'] == pytest.approx(6 / 8)   # ranks <= 5: all but 6 and 8
    logits = torch.as_tensor(table, dtype=torch.float32)
    assert result['loss'] == pytest.approx(float(nn.functional.cross_entropy(logits, torch.arange(classes))), rel=1e-5)


def test_max_images_is_an_evenly_spaced_subset():
    from vonenet_brainscore.training.evaluate import _evenly_spaced
    assert _evenly_spaced(100, 5) == [0, 25, 50, 74, 99]  # round(99 k / 4)
    assert _evenly_spaced(10, 10) == list(range(10)) and _evenly_spaced(10, None) == list(range(10))
    picked = _evenly_spaced(1000, 10)  # 1000 images, class by class (100 per class): one from each class
    assert sorted({index // 100 for index in picked}) == list(range(10))


# --- documented defaults: the paper's attack settings and training recipe -------------------------------------

def test_robustness_defaults_are_the_papers():
    from vonenet_brainscore import cli
    from vonenet_brainscore.robustness import DEFAULT_EPS, evaluate_robustness
    import inspect
    defaults = {name: p.default for name, p in inspect.signature(evaluate_robustness).parameters.items()}
    assert defaults['steps'] == PAPER['steps'] and defaults['step_fraction'] == PAPER['step_fraction']
    assert defaults['eot_draws'] == PAPER['eot_draws'] and defaults['random_start'] is False
    args = cli.build_parser().parse_args(['robustness', 'resnet50', '--in-path', 'x'])
    assert (args.steps, args.step_fraction, args.eot_draws) == (64, 0.25, 8)
    for norm in ('linf', 'l2', 'l1'):
        grid = DEFAULT_EPS[norm]
        assert len(grid) == 6 and grid[0] == 0
        assert grid[-1] == pytest.approx(PAPER['high'][norm]) and grid[3] == pytest.approx(PAPER['low'][norm])
        assert all(b == pytest.approx(2 * a) for a, b in zip(grid[1:], grid[2:]))  # doublings


def test_pgd_steps_are_a_quarter_of_eps_with_no_random_start():
    from vonenet_brainscore.robustness import pgd
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    images = torch.full((2, 3, 8, 8), 0.5)
    labels = torch.tensor([0, 1])
    one_step = pgd(model, images, labels, norm='linf', eps=0.04, steps=1, seed=1)
    assert (one_step - images).abs().max().item() == pytest.approx(0.01, abs=1e-6)  # eps / 4
    assert torch.equal(one_step, pgd(model, images, labels, norm='linf', eps=0.04, steps=1, seed=2))  # no random start
    many = pgd(model, images, labels, norm='linf', eps=0.04, steps=20, seed=1)
    assert (many - images).abs().max().item() <= 0.04 + 1e-6


def test_training_recipe_defaults_are_the_originals():
    from vonenet_brainscore import cli
    from vonenet_brainscore.training.recipe import TrainingSettings
    settings = TrainingSettings()
    assert {name: getattr(settings, name) for name in RECIPE} == RECIPE
    helps = {action.dest: action.help for action in cli.build_parser()._subparsers._group_actions[0]
             .choices['train']._actions}
    assert '(default 0.1)' in helps['lr'] and '(default 20)' in helps['step_size'] and '70' in helps['epochs']


# --- Brain-Score's environment variables -----------------------------------------------------------------------

ENV_PROBE = '''
import os
import vonenet_brainscore.brain.model, vonenet_brainscore.scoring.v1_properties.score, vonenet_brainscore.scoring.predictivity
import vonenet_brainscore.scoring.recordings, vonenet_brainscore.brain.extraction
print(os.environ.get('BS_INSTALL_DEPENDENCIES'), os.environ.get('AWS_EC2_METADATA_DISABLED'))
from vonenet_brainscore.brainscore_env import offline_defaults
with offline_defaults():
    print(os.environ.get('BS_INSTALL_DEPENDENCIES'), os.environ.get('AWS_EC2_METADATA_DISABLED'))
print(os.environ.get('BS_INSTALL_DEPENDENCIES'))
import vonenet_brainscore.cli
print(os.environ.get('BS_INSTALL_DEPENDENCIES'), os.environ.get('AWS_EC2_METADATA_DISABLED'))
'''


def test_library_sets_brainscore_variables_only_per_call_and_the_cli_for_its_process():
    env = {k: v for k, v in os.environ.items() if k not in ('BS_INSTALL_DEPENDENCIES', 'AWS_EC2_METADATA_DISABLED')}
    done = subprocess.run([sys.executable, '-c', ENV_PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split('\n')[:4] == ['None None', 'no true', 'None', 'no true']
    kept = subprocess.run([sys.executable, '-c', ENV_PROBE], env={**env, 'BS_INSTALL_DEPENDENCIES': 'yes'},
                          capture_output=True, text=True, timeout=300)
    assert kept.stdout.split('\n')[:4] == ['yes None', 'yes true', 'yes', 'yes true']  # the user's choice wins
