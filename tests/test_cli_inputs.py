"""Bad command-line input: a clear ``error: ...`` naming the flag and exit code 2, before any work starts.

Checks that must come before the work are tested with a tripwire on the work (the model build or the
scoring function raises if reached): the check under test runs for real, and the test fails if the
work starts first.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vonenet_brainscore
from synthetic_imagefolder import make_imagefolder
from vonenet_brainscore.cli import main

REPO = Path(vonenet_brainscore.__file__).resolve().parents[1]  # the tree under test, for the subprocess
UNWRITABLE = Path('/proc/vonenet-brainscore-test')  # nobody, root included, can create files under /proc


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp('images'), per_class_train=1, per_class_val=1, size=32)


@pytest.fixture(scope='module')
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp('image') / 'image.png'
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype('uint8')).save(path)
    return path


class WorkStarted(Exception):
    """Raised by the tripwires: the command started its work before checking its arguments."""


@pytest.fixture
def tripwire(monkeypatch):
    """Every expensive step of every verb raises WorkStarted."""
    def refuse(*args, **kwargs):
        raise WorkStarted('the work started before the arguments were checked')
    import vonenet_brainscore.training.evaluate as evaluate
    import vonenet_brainscore.training.train as training
    import vonenet_brainscore.published.catalogue as zoo
    monkeypatch.setattr(zoo, 'get_model', refuse)
    monkeypatch.setattr(training, 'train', refuse)
    monkeypatch.setattr(evaluate, 'validate', refuse)
    from vonenet_brainscore.scoring.v1_properties import score
    monkeypatch.setattr(score, 'score_v1_properties', refuse)
    import vonenet_brainscore.scoring.mapping as mapping
    monkeypatch.setattr(mapping, 'map_layers', refuse)


def fails(argv, capsys, *expected):
    """``main(argv)`` returns 2 and its stderr says each of ``expected``; returns stderr."""
    code = main([str(a) for a in argv])
    error = capsys.readouterr().err
    assert code == 2, error
    for text in expected:
        assert text in error, error
    assert 'Traceback' not in error
    return error


# --- numbers checked by argparse (item 12) ---------------------------------------------------------

@pytest.mark.parametrize('argv, flag', [
    (['classify', 'resnet50', '--untrained', 'IMAGE', '--top', '0'], '--top'),
    (['classify', 'resnet50', '--untrained', 'IMAGE', '--top', '-3'], '--top'),
    (['validate', 'resnet50', '--untrained', '--in-path', 'DATA', '--batch-size', '0'], '--batch-size'),
    (['validate', 'resnet50', '--untrained', '--in-path', 'DATA', '--workers', '-1'], '--workers'),
    (['validate', 'resnet50', '--untrained', '--in-path', 'DATA', '--ngpus', '-1'], '--ngpus'),
    (['validate', 'resnet50', '--untrained', '--in-path', 'DATA', '--max-images', '0'], '--max-images'),
    (['validate', 'resnet50', '--untrained', '--in-path', 'DATA', '--noise-seed', '-1'], '--noise-seed'),
    (['score', 'resnet50', '--untrained', '--batch-size', '0'], '--batch-size'),
    (['map-layers', 'resnet50', '--untrained', '--benchmarks', 'v1-properties', '--batch-size', '0'], '--batch-size'),
    (['train', 'resnet50', '--in-path', 'DATA', '--output-path', 'OUT', '--batch-size', '0'], '--batch-size'),
    (['train', 'resnet50', '--in-path', 'DATA', '--output-path', 'OUT', '--epochs', '0'], '--epochs'),
    (['train', 'resnet50', '--in-path', 'DATA', '--output-path', 'OUT', '--lr', '0'], '--lr'),
    (['train', 'resnet50', '--in-path', 'DATA', '--output-path', 'OUT', '--image-size', '0'], '--image-size'),
    (['train', 'resnet50', '--in-path', 'DATA', '--output-path', 'OUT', '--num-classes', '0'], '--num-classes'),
    (['train', 'resnet50', '--in-path', 'DATA', '--output-path', 'OUT', '--seed', '-1'], '--seed'),
    (['robustness', 'resnet50', '--untrained', '--in-path', 'DATA', '--batch-size', '0'], '--batch-size'),
    (['robustness', 'resnet50', '--untrained', '--in-path', 'DATA', '--max-images', '0'], '--max-images'),
    (['robustness', 'resnet50', '--untrained', '--in-path', 'DATA', '--severities', '6'], '--severities'),
    (['robustness', 'resnet50', '--untrained', '--in-path', 'DATA', '--eps-linf', '-0.1'], '--eps-linf'),
    (['robustness', 'resnet50', '--untrained', '--in-path', 'DATA', '--eps-l2', 'abc'], '--eps-l2'),
    (['robustness', 'resnet50', '--untrained', '--in-path', 'DATA', '--eot-draws', '0'], '--eot-draws'),
    (['robustness', 'resnet50', '--untrained', '--in-path', 'DATA', '--step-fraction', '0'], '--step-fraction'),
])
def test_out_of_range_numbers_name_their_flag(argv, flag, folder, image, tmp_path, tripwire, capsys):
    argv = [{'IMAGE': image, 'DATA': folder, 'OUT': tmp_path / 'out'}.get(a, a) for a in argv]
    fails(argv, capsys, f'argument {flag}: must be')


def test_top_above_the_number_of_outputs(image, capsys):
    fails(['classify', 'resnet50', '--untrained', image, '--top', '1001'], capsys,
          "--top 1001 asks for more labels than the model's 1000 outputs")


# --- flags that name a layer, a benchmark, a device, a corruption, a file ---------------------------

def test_unknown_layer_names_the_flag_and_lists_valid_layers(capsys):
    error = fails(['score', 'vonenet_resnet50', '--untrained', '--layer', 'model.nothing', '--quiet'], capsys,
                  "--layer 'model.nothing' is not a layer of vonenet_resnet50", 'model.layer1.0', 'vone_block')
    assert 'commitments/' not in error


def test_unknown_layers_to_map_name_the_flag(capsys):
    fails(['map-layers', 'vonenet_resnet50', '--untrained', '--benchmarks', 'v1-properties', '--layers', 'vone_block',
           'model.nothing', '--quiet'], capsys, "--layers: ", "'model.nothing'", 'candidate layers')


def test_unknown_benchmark_names_the_flag_before_the_model_is_built(tripwire, capsys):
    fails(['score', 'vonenet_resnet50', '--untrained', '--benchmarks', 'no-such-benchmark'], capsys,
          "--benchmarks: unknown V1 property benchmark 'no-such-benchmark'")


def test_unknown_model_names_are_clear_errors(image, folder, tmp_path, capsys):
    fails(['classify', 'no-such-model', '--untrained', image], capsys, "unknown VOneNet 'no-such-model'")
    fails(['score', 'no-such-model', '--untrained'], capsys, "unknown brain model 'no-such-model'")
    fails(['train', 'no-such-model', '--in-path', folder, '--output-path', tmp_path / 'out'], capsys,
          "unknown VOneNet 'no-such-model'")


def test_weights_that_are_a_folder_or_missing_name_the_flag(tmp_path, folder, tripwire, capsys):
    (tmp_path / 'epoch_03.pth.tar').write_bytes(b'')
    fails(['validate', 'resnet50', '--weights', tmp_path, '--in-path', folder], capsys,
          f'--weights {tmp_path} is a folder', 'epoch_03.pth.tar')
    fails(['info', 'resnet50', '--weights', tmp_path / 'missing.pth.tar'], capsys, '--weights', 'does not exist')


def test_missing_backend_weights_are_an_error_not_a_warning(folder, tmp_path, tripwire, capsys):
    fails(['robustness', 'resnet50', '--untrained', '--in-path', folder, '--backend-weights', tmp_path / 'missing.pth',
           '--output', tmp_path / 'out'], capsys, '--backend-weights', 'does not exist')


def test_unknown_device_and_corruption_name_their_flag(folder, tmp_path, tripwire, capsys):
    fails(['robustness', 'resnet50', '--untrained', '--in-path', folder, '--device', 'gpu0', '--output',
           tmp_path / 'out'], capsys, "--device 'gpu0' is not a device")
    fails(['robustness', 'resnet50', '--untrained', '--in-path', folder, '--corruptions', 'rain', '--output',
           tmp_path / 'out'], capsys, "--corruptions: unknown 'rain'")


def test_data_and_stimuli_need_each_other_and_must_exist(tmp_path, tripwire, capsys):
    fails(['map-layers', 'vonenet_resnet50', '--data', tmp_path / 'r.nc', '--output', tmp_path / 'o'], capsys,
          '--data needs --stimuli')
    fails(['map-layers', 'vonenet_resnet50', '--data', tmp_path / 'r.nc', '--stimuli', tmp_path,
           '--output', tmp_path / 'o'], capsys, f'--data {tmp_path / "r.nc"} does not exist')
    fails(['map-layers', 'vonenet_resnet50', '--output', tmp_path / 'o'], capsys, 'nothing to map against',
          '--data', '--benchmarks', '--v1-properties')


def test_change_recipe_needs_resume(folder, tmp_path, tripwire, capsys):
    fails(['train', 'resnet50', '--in-path', folder, '--output-path', tmp_path / 'out', '--change-recipe'], capsys,
          '--change-recipe', '--resume')


def test_help_and_usage_errors_return_instead_of_raising(capsys):
    assert main(['validate', '--help']) == 0
    assert main(['validate']) == 2
    assert main(['no-such-verb']) == 2


# --- item 9: output paths checked before the run ---------------------------------------------------

def _cases(tmp_path):
    """(verb arguments without --output, the flag, [(bad value, what the error says)])."""
    existing_file, existing_folder = tmp_path / 'a_file.json', tmp_path / 'a_folder'
    existing_file.write_text('{}')
    existing_folder.mkdir()
    under_a_file = existing_file / 'inside.json'
    return existing_file, existing_folder, under_a_file


@pytest.mark.parametrize('verb', ['score', 'validate'])
def test_json_outputs_are_checked_before_the_run(verb, folder, tmp_path, tripwire, capsys):
    existing_file, existing_folder, under_a_file = _cases(tmp_path)
    base = {'score': ['score', 'vonenet_resnet50', '--untrained', '--benchmarks', 'v1-properties'],
            'validate': ['validate', 'resnet50', '--untrained', '--in-path', folder]}[verb]
    fails(base + ['--output', existing_folder], capsys, f'--output {existing_folder} is an existing folder')
    fails(base + ['--output', tmp_path / 'results'], capsys, 'does not end in .json')
    fails(base + ['--output', under_a_file], capsys, f'{existing_file} is a file, not a folder')
    fails(base + ['--output', UNWRITABLE / 'results.json'], capsys, '--output', 'cannot be written')


def test_score_side_outputs_are_checked_before_the_run(tmp_path, tripwire, capsys):
    base = ['score', 'vonenet_resnet50', '--untrained', '--output', tmp_path / 'r.json']
    (tmp_path / 'r.csv').mkdir()
    fails(base, capsys, '--output', 'the CSV written beside the JSON', 'is an existing folder')
    (tmp_path / 'r.csv').rmdir()
    (tmp_path / 'r').write_text('not a folder')
    fails(base, capsys, '--output', 'the figures folder written beside the JSON', 'is an existing file')
    fails(base + ['--figures', tmp_path / 'figs', '--csv', tmp_path / 'table.txt'], capsys,
          '--csv', 'does not end in .csv')


@pytest.mark.parametrize('verb', ['map-layers', 'robustness', 'train'])
def test_folder_outputs_are_checked_before_the_run(verb, folder, tmp_path, tripwire, capsys):
    existing_file, _, under_a_file = _cases(tmp_path)
    base, flag, inside = {
        'map-layers': (['map-layers', 'vonenet_resnet50', '--untrained', '--benchmarks', 'v1-properties'], '--output',
                       'layer_mapping.json'),
        'robustness': (['robustness', 'resnet50', '--untrained', '--in-path', folder], '--output', 'robustness.csv'),
        'train': (['train', 'resnet50', '--in-path', folder], '--output-path', None)}[verb]
    fails(base + [flag, existing_file], capsys, f'{flag} {existing_file} is an existing file')
    fails(base + [flag, under_a_file], capsys, f'{existing_file} is a file, not a folder')
    fails(base + [flag, UNWRITABLE / 'out'], capsys, flag, 'cannot be written')
    if inside:
        (tmp_path / 'out' / inside).mkdir(parents=True)
        fails(base + [flag, tmp_path / 'out'], capsys, f'{tmp_path / "out" / inside} is a folder where the file')


def test_validate_into_an_existing_folder_fails_before_validating(folder, tmp_path, capsys):
    """No tripwire: the real run, which used to validate and then crash with IsADirectoryError."""
    fails(['validate', 'resnet50', '--untrained', '--in-path', folder, '--workers', '0', '--quiet', '--output',
           tmp_path], capsys, f'--output {tmp_path} is an existing folder')


# --- --quiet silences Brain-Score's own progress bars ----------------------------------------------

def _tiny_recordings(folder):
    from brainscore_core.supported_data_standards.brainio.assemblies import NeuronRecordingAssembly
    from vonenet_brainscore.scoring.recordings import save_recordings
    rng = np.random.default_rng(0)
    stimuli = folder / 'stimuli'
    stimuli.mkdir()
    ids = [f'img{i:02d}' for i in range(20)]
    for sid in ids:
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype('uint8')).save(stimuli / f'{sid}.png')
    signal = rng.normal(size=(20, 4))
    values = np.concatenate([signal + 0.3 * rng.normal(size=signal.shape) for _ in range(2)])
    recordings = NeuronRecordingAssembly(values, dims=['presentation', 'neuroid'], coords={
        'stimulus_id': ('presentation', ids * 2), 'repetition': ('presentation', np.repeat([0, 1], 20)),
        'neuroid_id': ('neuroid', [f'n{i}' for i in range(4)]), 'region': ('neuroid', ['IT'] * 4)})
    return save_recordings(recordings, folder / 'recordings.nc'), stimuli


def test_quiet_silences_brainscore_progress_bars(tmp_path):
    """map-layers runs Brain-Score's cross-validation, which draws a tqdm bar per benchmark and layer."""
    data, stimuli = _tiny_recordings(tmp_path)
    environment = {**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    environment.pop('TQDM_DISABLE', None)
    completed = subprocess.run(
        [sys.executable, '-m', 'vonenet_brainscore.cli', 'map-layers', 'vonenet_resnet50_nonoise', '--untrained',
         '--data', str(data), '--stimuli', str(stimuli), '--layers', 'vone_block', '--batch-size', '20',
         '--output', str(tmp_path / 'out'), '--quiet'],
        env=environment, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads((tmp_path / 'out' / 'layer_mapping.json').read_text())['layers'] == ['vone_block']
    for bar in ('%|', 'it/s]', 'cross-validation', 'activations:'):
        assert bar not in completed.stderr, completed.stderr[-3000:]
