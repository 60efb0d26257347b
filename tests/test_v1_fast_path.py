"""The fast V1 property path against today's path through files.

The reference everywhere is the pipeline as Brain-Score runs it: Brain-Score's own ``place_on_screen``
writes each stimulus for the model's screen to a PNG file, and the model's preprocessing reads those
files back (``score_brain_model(..., fast=False)``, ``VOneNetActivations`` outside ``fast_scoring``).
The fast path must give the same bytes (model inputs, noise digests, activations) and, end to end,
the same selected neurons and the same scores.
"""
import os

os.environ.setdefault('AWS_EC2_METADATA_DISABLED', 'true')
os.environ.setdefault('BS_INSTALL_DEPENDENCIES', 'no')
os.environ.setdefault('RESULTCACHING_DISABLE', '1')

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from brainscore_core.supported_data_standards.brainio.stimuli import StimulusSet  # noqa: E402
from brainscore_vision.benchmark_helpers import properties_common  # noqa: E402
from brainscore_vision.benchmark_helpers import screen as brainscore_screen  # noqa: E402

from vonenet_brainscore import build_vonenet  # noqa: E402
from vonenet_brainscore.brain import extraction  # noqa: E402
from vonenet_brainscore.brain.model import VOneNetBrainModel  # noqa: E402
from vonenet_brainscore.brain.commitments import load_commitment  # noqa: E402
from vonenet_brainscore.errors import StimulusError  # noqa: E402
from vonenet_brainscore.brain.extraction import VOneNetActivations, image_digest  # noqa: E402
from vonenet_brainscore.preprocessing import brainscore_preprocessing  # noqa: E402
from vonenet_brainscore.scoring.v1_properties import screen, stimuli  # noqa: E402
from vonenet_brainscore.brain.v1_window import around_property_stimuli  # noqa: E402
from vonenet_brainscore.scoring.v1_properties.score import fast_scoring  # noqa: E402

TARGET_DEGREES = 8  # the VOneNets' commitment


@pytest.fixture(scope='module')
def home(tmp_path_factory):
    """Every stimulus set generated once, and its screen images cached, in the session's shared cache
    (the one tests/test_v1_stimuli.py generates into, so a whole test run generates the sets once)."""
    root = tmp_path_factory.getbasetemp() / 'vonenet-v1-cache'
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('VONENET_BRAINSCORE_HOME', str(root))
        stimuli.generate_all(progress=False)
        for name in stimuli.STIMULUS_SET_NAMES:
            screen.screened_set(name, TARGET_DEGREES, brainscore_preprocessing(224), progress=False)
    return root


@pytest.fixture
def on_screen(home, tmp_path, monkeypatch):
    """The module cache, and Brain-Score's screen folder in this test's tmp_path."""
    monkeypatch.setenv('VONENET_BRAINSCORE_HOME', str(home))
    monkeypatch.setattr(brainscore_screen, 'root_path', tmp_path / 'stimuli_on_screen')
    return home


def _rows(name, count=4):
    n = len(stimuli.stimulus_metadata(name))
    rng = np.random.default_rng(len(name))
    return sorted({0, n - 1, *rng.choice(n, size=min(count, n), replace=False).tolist()})


def _subset(name, rows):
    full = stimuli.load_stimulus_set(name, progress=False)
    subset = full.iloc[rows]
    assert subset.identifier == name and subset.stimulus_paths is full.stimulus_paths
    return subset


def _not_delegated(*args, **kwargs):
    raise AssertionError("our generated stimulus set was handed to Brain-Score's place_on_screen")


def _paths(stimulus_set):
    return [str(stimulus_set.get_stimulus(stimulus_id)) for stimulus_id in stimulus_set['stimulus_id']]


# --- the model's inputs ----------------------------------------------------------------------------
@pytest.mark.parametrize('name', stimuli.STIMULUS_SET_NAMES)
def test_in_memory_screen_gives_the_bytes_of_brainscores_files(on_screen, name):
    """place_on_screen writing PNGs and the model's preprocessing reading them (today) against the
    in-memory screen: same stimulus set (rows, identifier, new paths), same model inputs to the
    bit, and the digests the noise is seeded with are those of today's inputs."""
    preprocessing = brainscore_preprocessing(224)
    subset = _subset(name, _rows(name))
    theirs = brainscore_screen.place_on_screen(subset, target_visual_degrees=TARGET_DEGREES)
    reference = preprocessing(_paths(theirs))  # today: the files Brain-Score wrote, read back

    memory = screen.InMemoryScreen(preprocessing, progress=False)
    ours = memory.place(subset, TARGET_DEGREES, original=_not_delegated)
    pd.testing.assert_frame_equal(pd.DataFrame(ours), pd.DataFrame(theirs))
    assert ours.identifier == theirs.identifier
    assert _paths(ours) == _paths(theirs)
    assert {k: str(v) for k, v in ours.original_paths.items()} == {k: str(v) for k, v in theirs.original_paths.items()}

    for path in _paths(theirs):  # the in-memory screen must not need them
        os.remove(path)
    served = memory(_paths(ours))
    assert served.dtype == reference.dtype and served.shape == reference.shape == (len(subset), 3, 224, 224)
    assert served.tobytes() == reference.tobytes()
    assert memory.digests(_paths(ours)) == [image_digest(image) for image in reference]


def test_paths_not_served_are_read_from_their_files(on_screen, tmp_path):
    preprocessing = brainscore_preprocessing(224)
    memory = screen.InMemoryScreen(preprocessing, progress=False)
    served_set = memory.place(_subset(stimuli.ORIENTATION, [3, 4]), TARGET_DEGREES, original=_not_delegated)
    other = tmp_path / 'other.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(other)
    paths = [_paths(served_set)[0], str(other), _paths(served_set)[1]]
    mixed = memory(paths)
    np.testing.assert_array_equal(mixed[1], preprocessing([str(other)])[0])
    np.testing.assert_array_equal(mixed[[0, 2]], memory(_paths(served_set)))
    assert memory.digests(paths) is None and memory.serves(_paths(served_set)) and not memory.serves(paths)


def test_other_stimulus_sets_go_to_brainscores_place_on_screen(on_screen):
    memory = screen.InMemoryScreen(brainscore_preprocessing(224), progress=False)
    calls = []

    def brainscore(stimulus_set, target_visual_degrees, source_visual_degrees=None):
        calls.append(stimulus_set.identifier)
        return stimulus_set
    renamed = _subset(stimuli.BLANK, [0]).copy()
    renamed.identifier = 'someone-elses-set'
    original = _subset(stimuli.ORIENTATION, [0, 1])
    moved = StimulusSet(pd.DataFrame(original))  # (a copy's get_stimulus stays bound to the original)
    moved.identifier = original.identifier
    moved.stimulus_paths = {k: str(original.get_stimulus(k)).replace('.png', '-copy.png')
                            for k in original['stimulus_id']}
    for stimulus_set in (renamed, moved):
        memory.place(stimulus_set, TARGET_DEGREES, original=brainscore)
    memory.place(_subset(stimuli.BLANK, [0]), TARGET_DEGREES, source_visual_degrees=10, original=brainscore)
    assert calls == ['someone-elses-set', stimuli.ORIENTATION, stimuli.BLANK]


# --- the screen cache --------------------------------------------------------------------------------
def test_screen_cache_is_keyed_by_what_changes_it(on_screen):
    preprocessing = brainscore_preprocessing(224)
    folder = screen.screen_dir(stimuli.SIZE, 8, preprocessing)
    assert folder.parent == on_screen / 'v1_properties' / 'screen'
    others = {screen.screen_dir(stimuli.SIZE, 10, preprocessing),
              screen.screen_dir(stimuli.ORIENTATION, 8, preprocessing),
              screen.screen_dir(stimuli.SIZE, 8, brainscore_preprocessing(192))}
    assert folder not in others and len(others) == 3
    spec = screen.screen_spec(stimuli.SIZE, 8, preprocessing)
    assert spec['stimulus_set'] == stimuli.stimulus_set_dir(stimuli.SIZE).name  # the generation parameters' hash
    assert {'brainscore-vision', 'Pillow', 'torch', 'torchvision', 'numpy'} <= set(spec['versions'])


def test_screen_cache_is_reused(on_screen, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError('screen images recomputed although cached')
    monkeypatch.setattr(screen, '_build', fail)
    entry = screen.screened_set(stimuli.RECEPTIVE_FIELD, TARGET_DEGREES, brainscore_preprocessing(224))
    assert len(entry) == 3528 and entry.rows([0, 3527]).shape == (2, 224, 224)


def test_damaged_screen_cache_is_recomputed(on_screen, tmp_path, monkeypatch):
    monkeypatch.setenv('VONENET_BRAINSCORE_HOME', str(tmp_path / 'own'))
    stimuli.generate_stimulus_set(stimuli.ORIENTATION, progress=False)
    preprocessing = brainscore_preprocessing(224)
    first = screen.screened_set(stimuli.ORIENTATION, TARGET_DEGREES, preprocessing, progress=False)
    expected = first.rows(range(len(first))).copy(), first.digests.copy()
    pixels_file = first.folder / screen.PIXELS_FILE
    pixels_file.write_bytes(pixels_file.read_bytes()[:-5000])  # truncated
    again = screen.screened_set(stimuli.ORIENTATION, TARGET_DEGREES, preprocessing, progress=False)
    np.testing.assert_array_equal(again.rows(range(len(again))), expected[0])
    np.testing.assert_array_equal(again.digests, expected[1])


def test_a_stimulus_file_changed_after_generation_is_detected(on_screen, tmp_path, monkeypatch):
    monkeypatch.setenv('VONENET_BRAINSCORE_HOME', str(tmp_path / 'own'))
    folder = stimuli.generate_stimulus_set(stimuli.BLANK, progress=False)
    Image.fromarray(np.full((448, 448), 127, dtype=np.uint8)).save(next(folder.glob('*.png')))
    memory = screen.InMemoryScreen(brainscore_preprocessing(224), progress=False)
    with pytest.raises(StimulusError, match='changed after they were generated'):
        memory.place(_subset(stimuli.BLANK, [0]), TARGET_DEGREES, original=_not_delegated)


# --- the model's activations ----------------------------------------------------------------------
def _activations(noise_mode='neuronal', channels=None):
    kwargs = {} if channels is None else {'simple_channels': channels, 'complex_channels': channels}
    network = build_vonenet(None, noise_mode=noise_mode, **kwargs)
    activations = VOneNetActivations(network, identifier=f'fast-test-{noise_mode}-{channels}',
                                     preprocessing=brainscore_preprocessing(224), batch_size=32,
                                     v1_window=around_property_stimuli(network.vone_block))
    model = VOneNetBrainModel(activations.identifier, activations, load_commitment('resnet50'))
    return activations, model


def _inputs(name, rows):
    entry = screen.screened_set(name, TARGET_DEGREES, brainscore_preprocessing(224), progress=False)
    pixels = entry.rows(rows)
    return screen.normalised(brainscore_preprocessing(224).pixel_values(), pixels), [entry.digest(r) for r in rows]


@pytest.mark.parametrize('name, rows, trials', [
    # receptive-field stimuli: mostly uniform grey inside the V1 window (computed once), some not
    (stimuli.RECEPTIVE_FIELD, list(range(0, 3528, 111)), 10),
    (stimuli.ORIENTATION, list(range(7, 1152, 50)), 20),
    (stimuli.SIZE, [0, 1, 2000, 2303, 5], 1),
    (stimuli.BLANK, [0], 20),
])
def test_fast_activations_equal_todays_bit_for_bit(on_screen, name, rows, trials):
    activations, _ = _activations()
    images, digests = _inputs(name, rows)
    with activations.trials(trials):
        reference = activations.get_activations(images, ['vone_block'])['vone_block'].copy()
        with activations.fast_scoring(workers=2):
            fast = activations.get_activations(images, ['vone_block'], digests=digests, reuse_buffers=True)
            fast = fast['vone_block'].copy()
            own_digests = activations.get_activations(list(images), ['vone_block'])['vone_block']
    assert reference.shape == (len(rows), 512, 12, 12) and reference.std() > 0
    assert fast.tobytes() == reference.tobytes()
    assert own_digests.tobytes() == reference.tobytes()


def test_todays_activations_do_not_depend_on_the_thread_count(on_screen):
    activations, _ = _activations()
    images, _ = _inputs(stimuli.SIZE, [100, 1500, 2200])
    threads = torch.get_num_threads()
    try:
        with activations.trials(4):
            outputs = []
            for count in (1, 2):
                torch.set_num_threads(count)
                outputs.append(activations.get_activations(images, ['vone_block'])['vone_block'].copy())
    finally:
        torch.set_num_threads(threads)
    assert outputs[0].tobytes() == outputs[1].tobytes()


@pytest.mark.parametrize('noise_mode', [None, 'gaussian'])
def test_fast_activations_of_other_noise_modes_equal_todays(on_screen, noise_mode):
    activations, _ = _activations(noise_mode, channels=16)
    images, digests = _inputs(stimuli.RECEPTIVE_FIELD, list(range(0, 3528, 200)))
    with activations.trials(3):
        reference = activations.get_activations(images, ['vone_block'])['vone_block'].copy()
        with activations.fast_scoring(workers=2):
            fast = activations.get_activations(images, ['vone_block'], digests=digests)['vone_block']
    assert fast.tobytes() == reference.tobytes()


def test_fused_noise_is_checked_against_noise_f_before_use(on_screen, monkeypatch):
    """The fused trials are used only where they reproduce noise_f on this machine; a fused arithmetic
    that does not (here: another epsilon than noise_f's) is caught, and today's trials run instead."""
    activations, _ = _activations(channels=16)
    block = activations._model.vone_block
    with activations.fast_scoring(workers=2):
        assert activations._fused_noise_matches(block)
    monkeypatch.setattr(extraction, 'NEURONAL_NOISE_EPS', 2 * extraction.NEURONAL_NOISE_EPS)
    activations._fused_checked.clear()
    images, digests = _inputs(stimuli.ORIENTATION, [3, 50, 400])
    with activations.trials(5):
        reference = activations.get_activations(images, ['vone_block'])['vone_block'].copy()
        with activations.fast_scoring(workers=2):
            fast = activations.get_activations(images, ['vone_block'], digests=digests)['vone_block']
            assert not activations._fused_noise_matches(block)
    assert fast.tobytes() == reference.tobytes()


def test_recording_through_the_fast_path_gives_todays_assembly(on_screen):
    """A whole look_at: Brain-Score's placement and files (today) against fast_scoring, and a repeated
    request answered from memory as a copy that the caller may change."""
    _, model = _activations(channels=16)
    subset = _subset(stimuli.ORIENTATION, list(range(40, 110)))
    model.start_recording('V1', [(70, 170)])
    reference = model.look_at(brainscore_screen.place_on_screen(subset, target_visual_degrees=TARGET_DEGREES),
                              number_of_trials=20)
    with fast_scoring(model, progress=False):
        placed = properties_common.place_on_screen(subset, target_visual_degrees=TARGET_DEGREES)
        first = model.look_at(placed, number_of_trials=20)
        first.values[:] = -1  # Brain-Score's analyses write into what they get
        second = model.look_at(placed, number_of_trials=20)
    assert properties_common.place_on_screen is brainscore_screen.place_on_screen  # restored
    assert model.activations_model._extractor.preprocess.__class__.__name__ == 'BrainScorePreprocessing'
    assert second.values.tobytes() == reference.values.tobytes()
    assert second.dims == reference.dims
    for coord in ('stimulus_id', 'neuroid_id', 'orientation', 'radius', 'phase', 'degrees', 'image_file_name'):
        np.testing.assert_array_equal(second[coord].values, reference[coord].values)


# --- end to end: selected neurons and scores ---------------------------------------------------------
SCORE = textwrap.dedent('''
    import hashlib, json, sys
    import numpy as np
    from brainscore_vision.benchmark_helpers import properties_common

    seen = {'in_rf': [], 'rates': []}
    filter_receptive_fields = properties_common.filter_receptive_fields
    get_firing_rates = properties_common.get_firing_rates

    def observed_filter(*args, **kwargs):  # observe only: Brain-Score's functions compute everything
        in_rf = filter_receptive_fields(*args, **kwargs)
        seen['in_rf'].append(np.atleast_1d(in_rf).tolist())
        return in_rf

    def observed_rates(*args, **kwargs):
        rates = get_firing_rates(*args, **kwargs)
        seen['rates'].append([kwargs['stimulus_identifier'], [str(n) for n in rates['neuroid_id'].values],
                              hashlib.sha1(np.ascontiguousarray(rates.values)).hexdigest()])
        return rates
    properties_common.filter_receptive_fields, properties_common.get_firing_rates = observed_filter, observed_rates

    from vonenet_brainscore.brain.v1_window import around_property_stimuli
    from vonenet_brainscore.scoring.v1_properties.score import score_brain_model, score_v1_properties
    benchmarks, fast, model_name = sys.argv[1].split(','), sys.argv[2] == 'fast', sys.argv[3]
    if not fast:  # today's path is many small torch operations, which other processes slow down most
        import torch  # on several threads; the thread count changes no value (tested in this file)
        torch.set_num_threads(1)
    if model_name == 'tiny':
        from vonenet_brainscore import build_vonenet
        from vonenet_brainscore.brain.model import VOneNetBrainModel
        from vonenet_brainscore.brain.commitments import load_commitment
        from vonenet_brainscore.brain.extraction import VOneNetActivations
        from vonenet_brainscore.preprocessing import brainscore_preprocessing
        network = build_vonenet(None, simple_channels=16, complex_channels=16, noise_mode='neuronal')
        activations = VOneNetActivations(network, identifier='tiny-vone-noise',
                                         preprocessing=brainscore_preprocessing(224), batch_size=32,
                                         v1_window=around_property_stimuli(network.vone_block))
        model = VOneNetBrainModel(activations.identifier, activations, load_commitment('resnet50'))
        results = score_brain_model(model, benchmarks, progress=False, fast=fast)
    else:
        results = score_v1_properties(model_name, benchmarks, pretrained=False, progress=False, fast=fast)
    json.dump({'results': [dict(r.as_dict(), model_values=r.model_values.tolist()) for r in results],
               'seen': seen}, sys.stdout)
''')


def _score(tmp_path, benchmarks, path, model, home):
    env = {**os.environ, 'RESULTCACHING_HOME': str(tmp_path / f'cache-{path}'), 'MPLBACKEND': 'Agg',
           'BRAINSCORE_HOME': str(tmp_path / f'brain-score-{path}'), 'VONENET_BRAINSCORE_HOME': str(home),
           # the benchmarks' own results are cached, as in a real run
           'RESULTCACHING_DISABLE': 'brainscore_vision.model_helpers.activations.core.ActivationsExtractorHelper'}
    done = subprocess.run([sys.executable, '-c', SCORE, ','.join(benchmarks), path, model], env=env,
                          capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_same_outcome(today, fast):
    assert fast['seen']['in_rf'] == today['seen']['in_rf'] and today['seen']['in_rf'][0]  # selected neurons
    assert fast['seen']['rates'] == today['seen']['rates']  # their ids and firing rates, byte for byte
    assert len(fast['results']) == len(today['results'])
    for ours, theirs in zip(fast['results'], today['results']):
        assert ours['benchmark'] == theirs['benchmark'] and ours['model_neurons'] == theirs['model_neurons'] > 0
        assert ours['model_values'] == theirs['model_values']
        for key in ('score', 'raw', 'ceiling'):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
        assert ours == theirs  # in fact identical


def test_fast_path_selects_the_same_neurons_and_scores_the_same_as_todays(tmp_path):
    """A small stochastic VOneBlock (16 + 16 channels, neuronal noise, V1 window) on pref_or, which
    maps receptive fields, fits the firing-rate transform and records orientation tuning: today's
    path (files, fast=False) against the fast path, each with a fresh result cache."""
    benchmarks = ['Marques2020_DeValois1982-pref_or']
    home = tmp_path / 'home'
    today = _score(tmp_path, benchmarks, 'today', 'tiny', home)
    fast = _score(tmp_path, benchmarks, 'fast', 'tiny', home)
    _assert_same_outcome(today, fast)


@pytest.mark.slow
def test_published_model_scores_the_same_on_both_paths(tmp_path):
    """vonenet_resnet50's VOneBlock (512 channels, neuronal noise) on three benchmarks that use all five
    stimulus sets: today's path against the fast path."""
    benchmarks = ['Marques2020_DeValois1982-pref_or', 'Marques2020_Schiller1976-sf_bandwidth',
                  'Marques2020_Cavanaugh2002-surround_suppression_index']
    home = tmp_path / 'home'
    today = _score(tmp_path, benchmarks, 'today', 'vonenet_resnet50', home)
    fast = _score(tmp_path, benchmarks, 'fast', 'vonenet_resnet50', home)
    _assert_same_outcome(today, fast)
    assert {rates[0] for rates in fast['seen']['rates']} == {stimuli.ORIENTATION, stimuli.BLANK,
                                                            stimuli.SPATIAL_FREQUENCY, stimuli.SIZE}


def test_a_windowed_v1_run_gives_back_the_stages_it_never_computes():
    from vonenet_brainscore.scoring.v1_properties.score import ReleasedStage, _release_unused_stages
    from vonenet_brainscore.published.catalogue import get_model
    network = get_model('resnet50', pretrained=False)
    names = [name for name, _ in network.named_children()]
    block = network.vone_block
    _release_unused_stages(network)
    assert [name for name, _ in network.named_children()] == names and network.vone_block is block
    assert all(isinstance(child, ReleasedStage) for name, child in network.named_children() if name != 'vone_block')
    assert sum(p.numel() for p in network.parameters()) == sum(p.numel() for p in block.parameters())
    with pytest.raises(RuntimeError, match='released'):
        network(torch.zeros(1, 3, 224, 224))


def test_inputs_of_one_uniform_value_are_computed_once(on_screen):
    """README: inside the V1 window most receptive-field stimuli are uniform grey; those are computed
    once (observed on the Gabor stage, which still computes everything it is given)."""
    activations, _ = _activations(noise_mode=None, channels=16)
    block = activations._model.vone_block
    rows = list(range(0, 3528, 49))
    images, digests = _inputs(stimuli.RECEPTIVE_FIELD, rows)
    r0, r1, c0, c1 = activations.v1_window
    crops = images[:, :, r0 * 4 - 12:(r1 - 1) * 4 + 13, c0 * 4 - 12:(c1 - 1) * 4 + 13].reshape(len(rows), -1)
    uniform = crops.min(axis=1) == crops.max(axis=1)
    distinct = int((~uniform).sum()) + len({float(v) for v in crops[uniform, 0]})
    assert uniform.sum() > 1 and distinct < len(rows)
    seen = []
    gabors_f = block.gabors_f

    def observed(x, padding=None):
        seen.append(len(x))
        return gabors_f(x, padding)
    block.gabors_f = observed
    try:
        reference = activations.get_activations(images, ['vone_block'])['vone_block'].copy()
        seen_reference, seen[:] = list(seen), []
        with activations.fast_scoring(workers=1):
            fast = activations.get_activations(images, ['vone_block'], digests=digests)['vone_block']
    finally:
        del block.gabors_f
    assert sum(seen_reference) == len(rows) and sum(seen) == distinct
    assert fast.tobytes() == reference.tobytes()
