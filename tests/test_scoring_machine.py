"""A built submission on a simulated Brain-Score scoring machine (see scoring_machine.py).

The machine has torch, torchvision and brainscore-vision but not vonenet-brainscore; the zip built by
``vonenet-brainscore submission`` is unpacked into its ``brainscore_vision/models/``; Brain-Score installs
the plugin's requirements itself (``BS_INSTALL_DEPENDENCIES=yes``); the published-format checkpoint,
written by the original VOneNet code, comes from a loopback mirror. Then Brain-Score's own entry points
must load and test the model, and give the V1 responses our package gives on the same images; with no
weights reachable, loading must fail with the error that says how to provide them, and nothing is scored.
"""
import json
import textwrap

import numpy as np
import pytest
from PIL import Image

from published_checkpoint import published_checkpoint
from scoring_machine import copy_generic_plugin_tests, make_scoring_machine, serve_folder
from vonenet_brainscore import cli

IDENTIFIER = 'vonenet_resnet50'
CHECKPOINT = 'voneresnet50_e70.pth.tar'  # the published file name the plugin downloads
GENERIC_TESTS = ('test_identifier', 'test_visual_degrees', 'test_start_task_or_recording',
                 'test_look_at_neural_V1', 'test_look_at_behavior_probabilities')

LOOK_AT = textwrap.dedent('''
    import importlib.util, json, sys
    from pathlib import Path
    import numpy as np
    identifier, images, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    if importlib.util.find_spec('vonenet_brainscore') is not None:
        sys.exit('vonenet_brainscore is importable on the scoring machine')
    import brainscore_vision
    from brainscore_core.supported_data_standards.brainio.stimuli import StimulusSet
    model = brainscore_vision.load_model(identifier)
    ids = sorted(p.stem for p in images.glob('*.png'))
    stimuli = StimulusSet({'stimulus_id': ids})
    stimuli.stimulus_paths = {i: images / f'{i}.png' for i in ids}
    stimuli.identifier = 'scoring-machine-images'
    model.start_recording('V1', [(70, 170)])
    responses = model.look_at(stimuli).transpose('presentation', 'neuroid')
    np.save(out / 'v1.npy', responses.values)
    json.dump({'identifier': model.identifier, 'module': type(model).__module__,
               'stimulus_id': [str(s) for s in responses['stimulus_id'].values],
               'neuroid_id': [str(n) for n in responses['neuroid_id'].values]}, open(out / 'meta.json', 'w'))
''')

SCORE = textwrap.dedent('''
    import sys
    import brainscore_vision
    try:
        score = brainscore_vision.score(model_identifier=sys.argv[1],
                                        benchmark_identifier='Marques2020_DeValois1982-pref_or')
    except Exception as error:
        print(f'NO SCORE: {type(error).__name__}: {error}')
        sys.exit(3)
    print(f'SCORED {float(score.values)}')
''')


@pytest.fixture(scope='module')
def submission_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp('submission') / f'{IDENTIFIER}.zip'
    assert cli.main(['submission', IDENTIFIER, str(out)]) == 0
    return out


@pytest.fixture(scope='module')
def machine(tmp_path_factory, submission_zip):
    machine = make_scoring_machine(tmp_path_factory.mktemp('scoring-machine'))
    machine.plugin_dir = machine.unpack(submission_zip)
    return machine


@pytest.fixture(scope='module')
def mirror(tmp_path_factory, reference):
    folder = tmp_path_factory.mktemp('mirror')
    published_checkpoint(reference, 'resnet50', folder / CHECKPOINT, noise_mode='neuronal')
    with serve_folder(folder) as url:
        yield url, folder / CHECKPOINT


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(7)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(folder / f'img{index}.png')
    return folder


def test_the_machine_lacks_our_package_and_brainscore_installs_the_requirements(machine):
    env = machine.env()
    probe = machine.run(['-c', 'import importlib.util, importlib.metadata as m, sys\n'
                               'print(importlib.util.find_spec("vonenet_brainscore"))\n'
                               'print([d.metadata["Name"] for d in m.distributions() '
                               'if "vonenet" in d.metadata["Name"]])\n'
                               'import torch, torchvision, brainscore_vision; print(brainscore_vision.__file__)'],
                        env=env)
    assert probe.returncode == 0, probe.stderr[-3000:]
    lines = probe.stdout.split('\n')
    assert lines[0] == 'None' and lines[1] == '[]', probe.stdout
    assert lines[2].startswith(str(machine.site_packages)), lines[2]
    # Every requirement is already satisfied by the machine's torch/torchvision/brainscore-vision: offline,
    # pip would fail on anything it had to fetch or replace.
    dry = machine.run(['-m', 'pip', 'install', '--dry-run', '--no-index', '-r',
                       machine.plugin_dir / 'requirements.txt'], env=env)
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    assert 'Would install' not in dry.stdout, dry.stdout


def test_brainscore_loads_the_model_and_gives_our_v1_responses(machine, mirror, images, tmp_path):
    url, checkpoint = mirror
    script = tmp_path / 'look_at.py'
    script.write_text(LOOK_AT)
    done = machine.run([script, IDENTIFIER, images, tmp_path], env=machine.env(VONENET_BRAINSCORE_MIRROR=url))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    calls = machine.pip_log.read_text()
    assert f"install -r {machine.plugin_dir / 'requirements.txt'}" in calls and '-> exit 0' in calls, calls
    meta = json.loads((tmp_path / 'meta.json').read_text())
    assert meta['identifier'] == IDENTIFIER  # loaded with its weights: no '_untrained' tag
    assert meta['module'].startswith(f'brainscore_vision.models.{IDENTIFIER}.vonenet_brainscore'), meta['module']
    assert (machine.root / 'vonenet-cache' / 'weights' / CHECKPOINT).read_bytes() == checkpoint.read_bytes()

    from brainscore_core.supported_data_standards.brainio.stimuli import StimulusSet
    from vonenet_brainscore import brain_model
    ids = sorted(p.stem for p in images.glob('*.png'))
    stimuli = StimulusSet({'stimulus_id': ids})
    stimuli.stimulus_paths = {i: images / f'{i}.png' for i in ids}
    stimuli.identifier = 'scoring-machine-images'
    ours = brain_model(IDENTIFIER, weights_path=checkpoint, progress=False)
    ours.start_recording('V1', [(70, 170)])
    expected = ours.look_at(stimuli).transpose('presentation', 'neuroid')
    assert meta['stimulus_id'] == [str(s) for s in expected['stimulus_id'].values]
    assert meta['neuroid_id'] == [str(n) for n in expected['neuroid_id'].values]
    machine_values = np.load(tmp_path / 'v1.npy')
    assert machine_values.shape == expected.shape == (3, 512 * 56 * 56)
    assert np.abs(expected.values).max() > 0
    np.testing.assert_allclose(machine_values, expected.values, rtol=0, atol=1e-6)


def test_brainscore_generic_plugin_tests_pass_on_the_machine(machine, mirror, tmp_path):
    url, _ = mirror
    folder = copy_generic_plugin_tests(tmp_path / 'generic')
    done = machine.run(['-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-m', 'not slow', '-c',
                        folder / 'pytest.ini', '--rootdir', folder, folder / 'generic_plugin_tests.py',
                        '--plugin_directory', machine.plugin_dir],
                       env=machine.env(VONENET_BRAINSCORE_MIRROR=url))
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert f'{len(GENERIC_TESTS)} passed' in done.stdout, done.stdout[-3000:]
    # The plugin's own test.py, as Brain-Score's CI runs it. There the plugin sits in a checkout of the
    # vision repository; here it sits in site-packages, which pytest's default import mode would put first
    # on sys.path (and OpenCV's loader then finds itself twice), so the test file is imported by path.
    plugin_tests = machine.run(['-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-c', folder / 'pytest.ini',
                                '--import-mode=importlib', '--rootdir', machine.plugin_dir,
                                machine.plugin_dir / 'test.py'],
                               env=machine.env(VONENET_BRAINSCORE_MIRROR=url))
    assert plugin_tests.returncode == 0, plugin_tests.stdout[-4000:] + plugin_tests.stderr[-2000:]
    assert '3 passed' in plugin_tests.stdout, plugin_tests.stdout[-2000:]


def test_without_reachable_weights_loading_fails_clearly_and_nothing_is_scored(machine, tmp_path):
    empty = tmp_path / 'empty-mirror'
    empty.mkdir()
    script = tmp_path / 'score.py'
    script.write_text(SCORE)
    with serve_folder(empty) as url:
        done = machine.run([script, IDENTIFIER],
                           env=machine.env(VONENET_BRAINSCORE_MIRROR=url,
                                           VONENET_BRAINSCORE_HOME=str(tmp_path / 'no-weights-cache')))
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    assert 'SCORED' not in done.stdout
    assert 'NO SCORE: WeightsUnavailableError' in done.stdout, done.stdout[-3000:]
    assert f'{url}{CHECKPOINT}' in done.stdout and 'VONENET_BRAINSCORE_MIRROR' in done.stdout
    assert 'place it at exactly' in done.stdout
    assert not (tmp_path / 'no-weights-cache' / 'weights' / CHECKPOINT).exists()
