"""Every CLI verb run end to end through ``cli.main``: what it prints and what it writes.
(`plugin` and `submission` are run in test_plugin.py and test_submission.py; score, validate, train and
robustness in test_v1_scoring.py, test_cli_training.py and test_cli_inputs.py.)"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vonenet_brainscore import cli

EXAMPLES = Path(__file__).resolve().parent.parent / 'examples'


def test_models_lists_every_published_model_and_its_cache_state(isolated_cache, capsys):
    from vonenet_brainscore.published.catalogue import CATALOGUE
    (isolated_cache / 'weights').mkdir(parents=True)
    (isolated_cache / 'weights' / 'vonealexnet_e70.pth.tar').write_bytes(b'placed by hand')
    assert cli.main(['models']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ['model', 'brain', 'model', 'back-end', 'weights', 'description']
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == list(CATALOGUE)
    assert 'vonenet_alexnet ' in rows['alexnet'] and 'cached (placed by hand)' in rows['alexnet']
    assert 'not cached' in rows['resnet50'] and 'vonenet_resnet50_at' in rows['resnet50_at']


def test_info_prints_the_architecture_and_shapes(capsys):
    assert cli.main(['info', 'alexnet', '--untrained', '--no-noise']) == 0
    out = capsys.readouterr().out
    assert 'model        alexnet (alexnet back-end)' in out
    assert 'V1 output    512 x 56 x 56 (vone_block)' in out
    assert 'logits       (1000,)' in out
    assert 'noise_mode=None' in out and 'simple_channels=256' in out


def test_info_without_weights_names_the_remedy(monkeypatch, capsys):
    monkeypatch.setenv('VONENET_BRAINSCORE_MIRROR', 'http://127.0.0.1:9/')
    assert cli.main(['info', 'alexnet']) == 2
    err = capsys.readouterr().err
    assert 'vonealexnet_e70.pth.tar' in err and '--untrained' in err


def test_classify_prints_top_labels_and_json(tmp_path, capsys):
    paths = []
    for index in range(2):
        path = tmp_path / f'image {index}.png'
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (100, 120, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    assert cli.main(['classify', 'alexnet', '--untrained', '--no-noise', '--top', '3', '--json', *paths]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index('{'):])
    assert [r['image'] for r in report['results']] == paths
    from vonenet_brainscore.preprocessing import imagenet_categories
    categories = imagenet_categories()
    for result in report['results']:
        assert len(result['top']) == 3
        probabilities = [entry['probability'] for entry in result['top']]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
        assert all(categories[entry['index']] == entry['label'] for entry in result['top'])
        assert f"  {result['top'][0]['probability']:6.3f}  {result['top'][0]['label']}" in out


@pytest.mark.slow  # about a minute; .ci/run runs it as its own step
def test_the_example_dataset_has_its_planted_answer(tmp_path):
    """examples/make_example_dataset.py (reduced) and map-layers through the CLI: V1 read out from
    vone_block and IT from model.avgpool must come back as the best layers."""
    data = tmp_path / 'example-data'
    made = subprocess.run([sys.executable, str(EXAMPLES / 'make_example_dataset.py'), str(data), '--images', '80',
                           '--neurons', '12'], capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stderr[-3000:]
    out = tmp_path / 'mapping'
    code = cli.main(['map-layers', 'vonenet_resnet50_nonoise', '--untrained', '--data', str(data / 'recordings.nc'),
                     '--stimuli', str(data / 'stimuli.csv'), '--layers', 'vone_block', 'model.layer2',
                     'model.layer4', 'model.avgpool', '--output', str(out), '--quiet', '--batch-size', '40'])
    assert code == 0
    written = {p.suffix for p in out.iterdir()}
    assert {'.csv', '.json', '.png'} <= written
    summary = json.loads(next(out.glob('*.json')).read_text())
    best = {entry['region']: entry['best_layer'] for entry in summary['best_layers']}
    assert best['V1'] == 'vone_block' and best['IT'] == 'model.avgpool', summary
