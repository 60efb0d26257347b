"""Brain models: committed layers, assembly layout, CORnet-S time bins, noise trials, cache keys."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from brainscore_core.supported_data_standards.brainio.stimuli import StimulusSet
from brainscore_vision.model_interface import BrainModel

from vonenet_brainscore.brain.model import brain_model, nearest_step, region_layer_map
from vonenet_brainscore.published.naming import IDENTIFIERS
from vonenet_brainscore.brain.commitments import load_commitment
from vonenet_brainscore.brain.extraction import image_digest
from vonenet_brainscore.errors import CommitmentError, StimulusError, UnknownModelError, WeightsUnavailableError
from vonenet_brainscore.preprocessing import brainscore_preprocessing


def _stimuli(folder, n=3, size=96, identifier=None, labels=None):
    rng = np.random.default_rng(0)
    paths = {}
    for i in range(n):
        path = folder / f'image{i}.png'
        Image.fromarray((rng.random((size, size, 3)) * 255).astype('uint8')).save(path)
        paths[f'stim{i}'] = path
    stimuli = StimulusSet({'stimulus_id': list(paths), 'object_name': ['thing'] * n,
                           'image_label': labels or (['dog', 'cat', 'dog'] * n)[:n]})
    stimuli.stimulus_paths = paths
    stimuli.identifier = identifier or f'test-{folder.name}'
    return stimuli


@pytest.fixture(scope='module')
def stimuli(tmp_path_factory):
    return _stimuli(tmp_path_factory.mktemp('stimuli'))


@pytest.fixture(scope='module')
def resnet_nonoise():
    return brain_model('vonenet_resnet50_nonoise', pretrained=False)


@pytest.fixture(scope='module')
def resnet_noisy():
    return brain_model('vonenet_resnet50', pretrained=False, batch_size=2)


def _direct(network, layer, stimuli, calls=False):
    """The module's output(s) for the stimuli, computed without the extractor."""
    images = torch.from_numpy(brainscore_preprocessing(224)([str(stimuli.get_stimulus(s))
                                                             for s in stimuli['stimulus_id']]))
    outputs = []
    handle = dict(network.named_modules())[layer].register_forward_hook(
        lambda m, i, o: outputs.append(o.detach().flatten(1).numpy().copy()))
    with torch.no_grad():
        network(images)
    handle.remove()
    return outputs if calls else outputs[-1]


def test_identifiers_cover_every_published_model_with_and_without_noise():
    assert len(IDENTIFIERS) == 10
    assert {'vonenet_resnet50', 'vonenet_resnet50_nonoise', 'vonenet_cornets', 'vonenet_alexnet',
            'vonenet_resnet50_at', 'vonenet_resnet50_ns_nonoise'} <= set(IDENTIFIERS)
    bundled = {'VOneCORnet-S', 'vonealexnet', 'voneresnet-50', 'voneresnet-50-robust'}
    assert not bundled & set(IDENTIFIERS)


@pytest.mark.parametrize('region', ['V2', 'V4', 'IT'])
def test_each_region_records_its_committed_layer(resnet_nonoise, stimuli, region):
    layer = load_commitment('resnet50').region_layers[region]
    resnet_nonoise.start_recording(region, [(70, 170)])
    responses = resnet_nonoise.look_at(stimuli)
    assert responses.dims == ('presentation', 'neuroid')
    assert set(responses['layer'].values) == {layer}
    assert set(responses['region'].values) == {region}
    assert list(responses['stimulus_id'].values) == list(stimuli['stimulus_id'])
    np.testing.assert_allclose(responses.values, _direct(resnet_nonoise.network, layer, stimuli), rtol=1e-5,
                               atol=1e-6)


def test_v1_is_the_vone_block_and_the_backend_never_runs(resnet_nonoise, stimuli):
    counted = []
    handles = [resnet_nonoise.network.model.layer1.register_forward_hook(lambda *a: counted.append('layer1')),
               resnet_nonoise.network.vone_block.simple.register_forward_hook(
                   lambda m, i, o: counted.append(i[0].shape[0]))]
    resnet_nonoise.start_recording('V1', [(50, 100)])
    responses = resnet_nonoise.look_at(stimuli)
    for handle in handles:
        handle.remove()
    assert counted == [3], 'one unpadded batch of 3 images, and no back-end stage run'
    assert responses.sizes['neuroid'] == 512 * 56 * 56
    assert len(set(responses['neuroid_id'].values)) == responses.sizes['neuroid']


def test_several_time_bins_repeat_a_feedforward_response(resnet_nonoise, stimuli):
    resnet_nonoise.start_recording('IT', [(70, 170), (170, 270)])
    responses = resnet_nonoise.look_at(stimuli)
    assert responses.dims == ('presentation', 'neuroid', 'time_bin')
    assert list(responses['time_bin_start'].values) == [70, 170]
    np.testing.assert_array_equal(responses.values[..., 0], responses.values[..., 1])


def test_cornets_time_bins_pick_the_matching_recurrent_step(stimuli):
    model = brain_model('vonenet_cornets_nonoise', pretrained=False)
    steps = _direct(model.network, 'model.V4.output', stimuli, calls=True)
    assert len(steps) == 4
    model.start_recording('V4', [(90, 140), (240, 290), (140, 190)])
    responses = model.look_at(stimuli)
    assert responses.dims == ('presentation', 'neuroid', 'time_bin')
    assert set(responses['layer'].values) == {'model.V4.output'}
    for index, step in enumerate([0, 3, 1]):
        np.testing.assert_allclose(responses.values[..., index], steps[step], rtol=1e-5, atol=1e-6)
    assert not np.allclose(steps[0], steps[3])
    model.start_recording('IT', [(200, 300)])
    it = model.look_at(stimuli)
    np.testing.assert_allclose(it.values, _direct(model.network, 'model.IT.output', stimuli, calls=True)[1],
                               rtol=1e-5, atol=1e-6)


def test_nearest_step():
    bins = [(90, 140), (140, 190), (190, 240), (240, 290)]
    assert nearest_step(bins, (90, 140)) == 0
    assert nearest_step(bins, (70, 170)) == 0  # centre 120 ms is nearest 115 ms
    assert nearest_step(bins, (150, 250)) == 2  # centre 200 ms is nearest 215 ms
    assert nearest_step(bins, (500, 600)) == 3


def test_noise_trials_are_seeded_independent_and_averaged(resnet_noisy, stimuli):
    resnet_noisy.start_recording('IT', [(70, 170)])
    once = resnet_noisy.look_at(stimuli).values
    again = resnet_noisy.look_at(stimuli).values
    np.testing.assert_array_equal(once, again)  # same seed, same draws
    other_seed = brain_model('vonenet_resnet50', pretrained=False, noise_seed=1)
    other_seed.start_recording('IT', [(70, 170)])
    assert not np.allclose(other_seed.look_at(stimuli).values, once)

    trials = resnet_noisy.look_at(stimuli, number_of_trials=3, require_variance=True)
    assert trials.sizes['presentation'] == 3 * len(stimuli)
    by_image = {sid: trials.values[trials['stimulus_id'].values == sid] for sid in stimuli['stimulus_id']}
    for values in by_image.values():
        assert values.shape[0] == 3 and not np.allclose(values[0], values[1])
    mean = resnet_noisy.look_at(stimuli, number_of_trials=3)
    for row, sid in enumerate(mean['stimulus_id'].values):
        np.testing.assert_allclose(mean.values[row], by_image[sid].mean(axis=0), rtol=1e-4, atol=1e-5)
    assert not np.allclose(mean.values, once)


def test_noise_does_not_depend_on_batch_size(stimuli):
    a = brain_model('vonenet_resnet50', pretrained=False, batch_size=1)
    b = brain_model('vonenet_resnet50', pretrained=False, batch_size=3)
    for model in (a, b):
        model.start_recording('V4', [(70, 170)])
    np.testing.assert_allclose(a.look_at(stimuli).values, b.look_at(stimuli).values, rtol=1e-5, atol=1e-5)


def test_noise_does_not_depend_on_image_order(stimuli, tmp_path):
    """Each image's noise draw depends on its content, not on where it sits in the stimulus set."""
    reordered = StimulusSet(stimuli.iloc[::-1].reset_index(drop=True))
    reordered.stimulus_paths = dict(stimuli.stimulus_paths)
    reordered.identifier = stimuli.identifier + '-reversed'
    model = brain_model('vonenet_resnet50', pretrained=False, batch_size=2)
    model.start_recording('V1', [(70, 170)])
    forward = model.look_at(stimuli)
    backward = model.look_at(reordered)
    assert list(backward['stimulus_id'].values) == list(stimuli['stimulus_id'])[::-1]
    for sid in stimuli['stimulus_id']:
        a = forward.values[forward['stimulus_id'].values == sid]
        b = backward.values[backward['stimulus_id'].values == sid]
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(forward.values[0], forward.values[1])


def test_cache_identifiers_differ_between_configurations(resnet_noisy, resnet_nonoise, tmp_path):
    keys = {resnet_noisy.activations_model.identifier, resnet_nonoise.activations_model.identifier,
            brain_model('vonenet_resnet50', pretrained=False, noise_seed=1).activations_model.identifier,
            brain_model('vonenet_resnet50', pretrained=False,
                        region_map='voneresnet-50').activations_model.identifier}
    assert len(keys) == 4
    with resnet_noisy.activations_model.trials(20):
        assert resnet_noisy.activations_model.identifier.endswith('trials=20')
    assert 'untrained' in resnet_noisy.identifier


def test_every_voneblock_setting_is_part_of_the_cache_key():
    base = brain_model('vonenet_resnet50', pretrained=False)
    keys = {base.activations_model.identifier}
    for change in ({'gabor_seed': 1}, {'colour_seed': 1}, {'noise_scale': 0.5}, {'noise_level': 0.1},
                   {'noise_mode': 'gaussian'}):
        model = brain_model('vonenet_resnet50', pretrained=False, vone_settings=change)
        name, value = next(iter(change.items()))
        assert getattr(model.network.vone_block.config, name) == value
        assert f'{name.replace("_mode", "")}={value}' in model.activations_model.settings_description
        keys.add(model.activations_model.identifier)
    assert len(keys) == 6
    with pytest.raises(ValueError, match="noise off"):
        brain_model('vonenet_resnet50_nonoise', pretrained=False, vone_settings={'noise_mode': 'neuronal'})


def test_weights_file_digest_is_part_of_the_cache_key(tmp_path):
    network = brain_model('vonenet_alexnet_nonoise', pretrained=False).network
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.nn.init.normal_(network.bottleneck.weight)
        path = tmp_path / f'alexnet{seed}.pth.tar'
        torch.save({'flags': {'arch': 'alexnet', 'noise_mode': None}, 'epoch': 1,
                    'state_dict': network.state_dict()}, path)
        paths.append(path)
    first, second = (brain_model('vonenet_alexnet_nonoise', weights_path=p) for p in paths)
    assert first.identifier == 'vonenet_alexnet_nonoise'
    assert first.activations_model.identifier != second.activations_model.identifier


def test_without_weights_a_published_name_fails_and_is_never_built_untrained(monkeypatch, tmp_path):
    monkeypatch.setenv('VONENET_BRAINSCORE_MIRROR', 'http://127.0.0.1:9/')  # nothing listens on port 9
    monkeypatch.setenv('VONENET_BRAINSCORE_HOME', str(tmp_path / 'empty-cache'))
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no "falling back" warning either: an error, and nothing built
        with pytest.raises(WeightsUnavailableError, match=r'(?s)vonealexnet_e70\.pth\.tar.*weights_path'):
            brain_model('vonenet_alexnet')


def test_the_untrained_model_on_purpose_is_tagged():
    model = brain_model('vonenet_alexnet', pretrained=False)
    assert model.identifier == 'vonenet_alexnet_untrained'
    assert 'weights=untrained' in model.activations_model.settings_description


def test_behaviour_tasks(resnet_nonoise, stimuli):
    resnet_nonoise.start_task(BrainModel.Task.probabilities, fitting_stimuli=stimuli)
    probabilities = resnet_nonoise.look_at(stimuli)
    assert set(probabilities.dims) == {'presentation', 'choice'}
    np.testing.assert_allclose(probabilities.values.sum(axis=1), 1, atol=1e-5)

    resnet_nonoise.start_task(BrainModel.Task.label, 'imagenet')
    labels = resnet_nonoise.look_at(stimuli)
    logits = _direct(resnet_nonoise.network, 'model.fc', stimuli)
    assert list(labels['logit'].values) == list(logits.argmax(axis=1))

    # Choice labels: ImageNet probabilities (softmax of the classifier's logits) averaged over each
    # label's ImageNet classes (the model-vs-human mapping's class lists), the larger mean chosen.
    from brainscore_vision.model_helpers.brain_transformation.behavior import LabelToImagenetIndices
    resnet_nonoise.start_task(BrainModel.Task.label, ['dog', 'cat'])
    choices = resnet_nonoise.look_at(stimuli)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    means = np.stack([probabilities[:, LabelToImagenetIndices.label_to_indices(label)].mean(axis=1)
                      for label in ('dog', 'cat')], axis=1)
    assert np.ravel(choices.values).tolist() == [('dog', 'cat')[i] for i in means.argmax(axis=1)]

    # Odd one out: dot-product similarity of the behavioural readout's features (model.avgpool, from
    # the commitment); the image outside the most similar pair is the odd one.
    resnet_nonoise.start_task(BrainModel.Task.odd_one_out)
    ids = ['stim0', 'stim1', 'stim2']
    triplets = StimulusSet({'stimulus_id': ids + ['stim2', 'stim0', 'stim1']})
    triplets.stimulus_paths = {sid: stimuli.get_stimulus(sid) for sid in ids}
    triplets.identifier = 'test-triplets'
    choice = resnet_nonoise.look_at(triplets)
    features = dict(zip(stimuli['stimulus_id'], _direct(resnet_nonoise.network, 'model.avgpool', stimuli)))

    def odd_one(i, j, k):
        similarities = [features[a] @ features[b] for a, b in ((i, j), (i, k), (j, k))]
        return (k, j, i)[int(np.argmax(similarities))]
    assert np.ravel(choice.values).tolist() == [odd_one(*ids), odd_one('stim2', 'stim0', 'stim1')]
    resnet_nonoise.start_task(BrainModel.Task.passive)


def test_region_layer_map_comes_from_commitments():
    assert region_layer_map('vonenet_cornets') == {'V1': 'vone_block', 'V2': 'model.V2.output',
                                                   'V4': 'model.V4.output', 'IT': 'model.IT.output'}


def test_unknown_identifier():
    with pytest.raises(UnknownModelError, match='vonenet_resnet50_nonoise'):
        brain_model('voneresnet-50')


@pytest.mark.parametrize('old, new', [('vonenet-resnet50', 'vonenet_resnet50'),
                                      ('vonenet-resnet50-at-nonoise', 'vonenet_resnet50_at_nonoise'),
                                      ('vonenet-cornets-nonoise', 'vonenet_cornets_nonoise')])
def test_old_hyphenated_identifier_names_its_replacement(old, new):
    with pytest.raises(UnknownModelError, match=f"'{old}' is the old hyphenated name.*'{new}'"):
        brain_model(old, pretrained=False)


def test_identifiers_have_no_hyphen_and_follow_one_rule():
    from vonenet_brainscore.published.catalogue import CATALOGUE
    assert IDENTIFIERS, 'no identifiers'
    assert not [identifier for identifier in IDENTIFIERS if '-' in identifier]
    expected = {f'vonenet_{name}' for name in CATALOGUE} | {f'vonenet_{name}_nonoise' for name in CATALOGUE}
    assert set(IDENTIFIERS) == expected


def test_unknown_region(resnet_nonoise):
    with pytest.raises(CommitmentError, match="region 'MT'"):
        resnet_nonoise.start_recording('MT', [(70, 170)])


def test_map_naming_a_missing_layer():
    with pytest.raises(CommitmentError, match="model.layer9"):
        brain_model('vonenet_resnet50_nonoise', pretrained=False, region_layers={'IT': 'model.layer9'})


def test_unknown_alternative_map():
    with pytest.raises(CommitmentError, match='voneresnet-50'):
        brain_model('vonenet_resnet50', pretrained=False, region_map='nope')


def test_unreadable_image_names_the_file(resnet_nonoise, tmp_path):
    stimuli = _stimuli(tmp_path, n=2, identifier='test-broken')
    broken = tmp_path / 'image1.png'
    broken.write_bytes(b'not a png')
    resnet_nonoise.start_recording('IT', [(70, 170)])
    with pytest.raises(StimulusError, match='image1.png'):
        resnet_nonoise.look_at(stimuli)


def test_look_at_before_recording_is_a_clear_error():
    model = brain_model('vonenet_alexnet_nonoise', pretrained=False)
    with pytest.raises(CommitmentError, match='start_recording'):
        model.look_at(StimulusSet({'stimulus_id': []}))


def test_v1_window_equals_the_full_map_at_those_units(stimuli):
    full = brain_model('vonenet_resnet50_nonoise', pretrained=False)
    window = full.network.vone_block.units_within((0.5, 0.5), 0.85)
    cropped = brain_model('vonenet_resnet50_nonoise', pretrained=False, v1_window=window)
    assert cropped.activations_model.identifier.endswith('v1_window=' + ':'.join(map(str, window)))
    for model in (full, cropped):
        model.start_recording('V1', [(70, 170)])
    full_map = full.look_at(stimuli).values.reshape(len(stimuli), 512, 56, 56)
    r0, r1, c0, c1 = window
    assert (r1 - r0, c1 - c0) == (12, 12)
    expected = full_map[:, :, r0:r1, c0:c1].reshape(len(stimuli), -1)
    np.testing.assert_allclose(cropped.look_at(stimuli).values, expected, rtol=1e-5, atol=1e-4)


def test_v1_fast_path_equals_the_full_forward_with_noise(stimuli):
    model = brain_model('vonenet_resnet50', pretrained=False)
    model.start_recording('V1', [(70, 170)])
    fast = model.look_at(stimuli, number_of_trials=2).values
    images = np.stack(brainscore_preprocessing(224)([str(stimuli.get_stimulus(s)) for s in stimuli['stimulus_id']]))
    activations = model.activations_model
    block = model.network.vone_block
    draws = []
    for trial in range(2):
        digests = [image_digest(image) for image in images]
        block.noise_source.freeze(activations._trial_noise(digests, trial, block.output_shape()))
        with torch.no_grad():
            draws.append(block(torch.from_numpy(images)).flatten(1).numpy())
        block.noise_source.freeze(None)
    np.testing.assert_allclose(fast, np.mean(draws, axis=0), rtol=1e-5, atol=1e-4)


def test_public_api_exposes_the_brain_model_functions():
    import vonenet_brainscore as vb
    from vonenet_brainscore.brain import model as brain
    assert vb.brain_model is brain.brain_model and vb.list_identifiers() == list(IDENTIFIERS)
    with pytest.raises(AttributeError, match='no attribute'):
        vb.not_a_function
