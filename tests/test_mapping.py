"""Neural predictivity and layer-to-region mapping on synthetic recordings with a known answer.

Neurons are noisy linear read-outs of ONE layer's features (computed by Brain-Score's own extractor,
not by the code under test) on images the test draws; the mapping must find that layer, beat
shuffled stimulus labels by far, and match Brain-Score's scores on the full layer.
"""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly, NeuronRecordingAssembly

from vonenet_brainscore.brain.model import brain_model
from vonenet_brainscore.errors import CommitmentError, DataError
from vonenet_brainscore.scoring.mapping import CountSketch, map_layers, principal_components
from vonenet_brainscore.scoring.predictivity import neural_benchmark, score_activations, score_layer
from vonenet_brainscore.scoring.recordings import assemble, load_stimuli, save_stimuli_csv

IMAGES = 80
LAYERS = ['vone_block', 'model.layer1.0', 'model.layer2.0', 'model.layer3.0']
GENERATING = {'V1': 'vone_block', 'IT': 'model.layer2.0'}
NEURONS = 24
REPETITIONS = 2
NOISE = 0.5


def _image(rng, size=64):
    """Gratings, blobs or noise: varied enough that layers differ."""
    y, x = np.mgrid[0:size, 0:size] / size
    kind = rng.integers(3)
    if kind == 0:
        angle, frequency = rng.uniform(0, np.pi), rng.uniform(2, 12)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 6))
        image = wave[..., None] * rng.random(3) + (1 - wave[..., None]) * rng.random(3)
    elif kind == 1:
        image = np.ones((size, size, 3)) * rng.random(3)
        for _ in range(rng.integers(1, 5)):
            weight = np.exp(-((x - rng.random()) ** 2 + (y - rng.random()) ** 2) / (2 * rng.uniform(.03, .2) ** 2))
            image = image * (1 - weight[..., None]) + weight[..., None] * rng.random(3)
    else:
        image = rng.random((size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1) * .5 + rng.random((size, size, 3)) * .5
    return (image * 255).clip(0, 255).astype('uint8')


def _stimuli(folder, n, seed=0, size=64):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i in range(n):
        paths[f'img{i:03d}'] = folder / f'img{i:03d}.png'
        Image.fromarray(_image(rng, size) if size > 8 else (rng.random((size, size, 3)) * 255).astype('uint8')
                        ).save(paths[f'img{i:03d}'])
    return load_stimuli(save_stimuli_csv(paths, folder / 'stimuli.csv'))


def _recordings(stimulus_set, signals, repetitions, noise, seed=0):
    """Recordings (stimulus-major repetitions with independent noise) of stimuli x neurons signals."""
    rng = np.random.default_rng(seed)
    ids = list(stimulus_set['stimulus_id'])
    regions = [region for region, signal in signals.items() for _ in range(signal.shape[1])]
    signal = np.concatenate(list(signals.values()), axis=1)
    values = np.concatenate([signal + noise * rng.normal(size=signal.shape) for _ in range(repetitions)])
    array = NeuronRecordingAssembly(5 + 2 * values, dims=['presentation', 'neuroid'], coords={
        'stimulus_id': ('presentation', ids * repetitions),
        'repetition': ('presentation', np.repeat(np.arange(repetitions), len(ids))),
        'neuroid_id': ('neuroid', [f'n{i}' for i in range(len(regions))]), 'region': ('neuroid', regions)})
    return assemble(array, stimulus_set)


def _principal_components(assembly):
    """All principal-component scores of a layer (stimuli x units) over the stimuli, as an assembly:
    an exact rotation of the centred layer, computed here with plain numpy."""
    values = np.asarray(assembly.transpose('presentation', 'neuroid').values, dtype=np.float32)
    gram = (values @ values.T).astype(np.float64)
    centring = np.eye(len(gram)) - 1 / len(gram)
    eigenvalues, eigenvectors = np.linalg.eigh(centring @ gram @ centring)
    keep = eigenvalues[::-1] > eigenvalues.max() * 1e-9
    scores = (eigenvectors[:, ::-1] * np.sqrt(np.abs(eigenvalues[::-1])))[:, keep]
    return NeuroidAssembly(scores, dims=['presentation', 'neuroid'], coords={  # brainio: 2+ coords a dim
        'stimulus_id': ('presentation', assembly['stimulus_id'].values),
        'stimulus_num': ('presentation', np.arange(len(scores))),
        'neuroid_id': ('neuroid', [f'pc{i}' for i in range(scores.shape[1])]),
        'component': ('neuroid', np.arange(scores.shape[1]))})


def _readout(components, neurons, rng, leading=10):
    """Random mixes of the leading principal components (each at unit variance), unit variance."""
    basis = components.values[:, :leading]
    signal = (basis / basis.std(0)) @ rng.normal(size=(leading, neurons))
    return (signal - signal.mean(0)) / signal.std(0)


@pytest.fixture(scope='module')
def stimulus_set(tmp_path_factory):
    return _stimuli(tmp_path_factory.mktemp('mapping-stimuli'), IMAGES)


@pytest.fixture(scope='module')
def model():
    return brain_model('vonenet_resnet50_nonoise', pretrained=False, batch_size=40, progress=False)


@pytest.fixture(scope='module')
def components(model, stimulus_set):
    """Principal components of the generating layers, from Brain-Score's own extractor (not the mapping's)."""
    activations = model.activations_model(stimulus_set, layers=sorted(set(GENERATING.values())))
    layer = activations['layer'].values
    return {name: _principal_components(activations.isel(neuroid=np.flatnonzero(layer == name)))
            for name in set(GENERATING.values())}


@pytest.fixture(scope='module')
def recordings(stimulus_set, components):
    rng = np.random.default_rng(1)
    signals = {region: _readout(components[layer], NEURONS, rng) for region, layer in GENERATING.items()}
    return _recordings(stimulus_set, signals, REPETITIONS, NOISE)


@pytest.fixture(scope='module')
def mapping(model, recordings):
    seen = []
    handle = model.network.vone_block.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    try:
        result = map_layers(model, recordings, layers=LAYERS, progress=False)
    finally:
        handle.remove()
    return result, sum(seen)


def _column(mapping, region):
    return next(b for b, r in mapping.regions.items() if r == region)


def test_generating_layer_predicts_best(mapping):
    mapping, _ = mapping
    assert list(mapping.scores.index) == LAYERS  # network order
    best = mapping.best_layers()
    for region, layer in GENERATING.items():
        column = mapping.raw[_column(mapping, region)]
        assert best.loc[region, 'best_layer'] == layer, column
        assert column[layer] > 0.7
        assert column[layer] > column.drop(layer).max() + 0.01  # neighbouring stages share much


def test_network_runs_once_for_every_layer_and_region(mapping):
    mapping, images_seen = mapping
    assert images_seen == IMAGES  # 4 layers x 2 regions, one pass over the images
    (info,) = mapping.layer_info.values()
    assert set(info) == set(LAYERS)
    for layer in LAYERS:  # few images: every layer exactly rotated onto its IMAGES - 1 components
        assert info[layer]['reduction'] == 'pca' and info[layer]['components'] == IMAGES - 1


def test_mapping_equals_brainscore_on_the_layers_components(mapping, recordings, components):
    mapping, _ = mapping
    for region, layer in GENERATING.items():
        benchmark = neural_benchmark(recordings, region)
        direct = score_activations(components[layer], benchmark)
        assert float(direct.raw) == pytest.approx(mapping.raw.loc[layer, benchmark.identifier], abs=2e-3)
        assert float(direct) == pytest.approx(mapping.scores.loc[layer, benchmark.identifier], abs=2e-3)


def test_brain_model_on_the_full_layer_equals_its_components(model, recordings, components):
    """The brain model records the whole layer; the mapping's rotation onto all components is exact."""
    benchmark = neural_benchmark(recordings, 'IT', metric='ridge')  # ridge: cheap on 400k features
    full = score_layer(model, 'model.layer2.0', benchmark)
    rotated = score_activations(components['model.layer2.0'], benchmark)
    assert float(full.raw) > 0.5
    assert float(full.raw) == pytest.approx(float(rotated.raw), abs=2e-3)


def test_shuffled_stimulus_labels_predict_nothing(recordings, components, stimulus_set):
    ids = np.asarray(recordings['stimulus_id'].values)
    unique = list(stimulus_set['stimulus_id'])
    relabel = dict(zip(unique, np.random.default_rng(5).permutation(unique)))
    shuffled = NeuronRecordingAssembly(recordings.values, dims=['presentation', 'neuroid'], coords={
        'stimulus_id': ('presentation', [relabel[s] for s in ids]),
        'repetition': ('presentation', recordings['repetition'].values),
        'neuroid_id': ('neuroid', recordings['neuroid_id'].values), 'region': ('neuroid', recordings['region'].values)})
    shuffled = assemble(shuffled, stimulus_set)
    true = score_activations(components['model.layer2.0'], neural_benchmark(recordings, 'IT'))
    null = score_activations(components['model.layer2.0'], neural_benchmark(shuffled, 'IT'))
    assert float(true.raw) > 0.7
    assert abs(float(null.raw)) < 0.25
    assert float(null) < 0.1 * float(true)


def test_split_half_ceiling_matches_spearman_brown(tmp_path):
    signal_sd, noise_sd, repetitions = 1., 1.5, 4
    stimuli = _stimuli(tmp_path, 200, size=8)
    rng = np.random.default_rng(3)
    recordings = _recordings(stimuli, {'V4': signal_sd * rng.normal(size=(200, 60))}, repetitions, noise_sd, seed=4)
    # Each half averages repetitions/2 trials: r_half = s^2 / (s^2 + 2 n^2 / R); Spearman-Brown
    # 2 r / (1 + r) then gives the reliability of the mean of all R: s^2 / (s^2 + n^2 / R).
    expected = signal_sd ** 2 / (signal_sd ** 2 + noise_sd ** 2 / repetitions)
    ceiling = float(neural_benchmark(recordings, 'V4').ceiling)
    assert ceiling == pytest.approx(expected, abs=0.03)
    half = signal_sd ** 2 / (signal_sd ** 2 + 2 * noise_sd ** 2 / repetitions)
    assert abs(ceiling - half) > 0.1  # i.e. the correction was applied


def test_no_repetitions_means_no_ceiling_correction(tmp_path):
    stimuli = _stimuli(tmp_path, 30, size=8)
    recordings = _recordings(stimuli, {'IT': np.random.default_rng(0).normal(size=(30, 5))}, 1, 1.)
    assert float(neural_benchmark(recordings, 'IT').ceiling) == 1.


def test_outputs(mapping, tmp_path):
    mapping, _ = mapping
    files = mapping.save(tmp_path / 'out')
    table = pd.read_csv(files['csv'], index_col='layer')
    pd.testing.assert_frame_equal(table, mapping.scores, check_names=False)
    saved = json.loads(files['json'].read_text())
    assert saved['layers'] == LAYERS
    for layer in LAYERS:
        for benchmark in mapping.scores.columns:
            assert saved['scores'][layer][benchmark] == pytest.approx(mapping.scores.loc[layer, benchmark])
    rows = {row['region']: row for row in saved['best_layers']}
    assert rows['V1']['best_layer'] == 'vone_block' and rows['V1']['committed_layer'] == 'vone_block'
    assert rows['IT']['best_layer'] == 'model.layer2.0' and rows['IT']['committed_layer'] == 'model.layer4'
    assert rows['IT']['committed_score'] is None  # model.layer4 was not among the mapped layers
    with Image.open(files['heatmap']) as image:
        assert image.format == 'PNG' and image.size[0] > 200 and image.size[1] > 200


def test_principal_components_match_sklearn():
    from sklearn.decomposition import PCA
    rng = np.random.default_rng(0)
    for shape in ((40, 300), (300, 40)):
        data = (rng.normal(size=(shape[0], 8)) @ rng.normal(size=(8, shape[1])) * 3 + rng.normal(size=shape)
                ).astype(np.float32)
        scores, explained = principal_components(data, 10)
        reference = PCA(10).fit(data)
        expected = reference.transform(data)
        np.testing.assert_allclose(np.abs(scores), np.abs(expected), rtol=1e-3, atol=1e-3)
        assert explained == pytest.approx(reference.explained_variance_ratio_.sum(), rel=1e-4)


def test_count_sketch_keeps_inner_products():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(20, 200_000)).astype(np.float32)
    sketched = CountSketch(data.shape[1], 4000, seed=1)(data)
    exact, approximate = data @ data.T, sketched @ sketched.T
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    assert np.abs(approximate - exact).max() / scale.max() < 0.1  # ~ 1/sqrt(4000) per entry


def test_sketched_layers_still_find_the_generating_layer(model, recordings):
    mapping = map_layers(model, recordings, layers=['vone_block', 'model.layer1.0'], max_memory_gb=0.05,
                         progress=False)
    (info,) = mapping.layer_info.values()
    assert info['vone_block']['reduction'] == 'sketch' and info['model.layer1.0']['reduction'] == 'sketch'
    assert mapping.best_layers().loc['V1', 'best_layer'] == 'vone_block'


def test_clear_errors(model, recordings):
    with pytest.raises(CommitmentError, match="no layer.*'model.nothing'"):
        map_layers(model, recordings, layers=['vone_block', 'model.nothing'], progress=False)
    with pytest.raises(DataError, match="no neuroids of region 'V4'"):
        neural_benchmark(recordings, 'V4')
    with pytest.raises(DataError, match="unknown predictivity metric 'cka'"):
        neural_benchmark(recordings, 'IT', metric='cka')
    with pytest.raises(DataError, match='nothing to map against'):
        map_layers(model, progress=False)
    with pytest.raises(CommitmentError, match='no layer'):
        score_layer(model, 'model.nothing', neural_benchmark(recordings, 'IT'))
    with pytest.raises(DataError, match="unknown Brain-Score benchmark id 'no-such-benchmark'"):
        map_layers(model, benchmarks=['no-such-benchmark'], layers=['vone_block'], progress=False)


def test_too_few_stimuli(tmp_path):
    stimuli = _stimuli(tmp_path, 6, size=8)
    recordings = _recordings(stimuli, {'IT': np.random.default_rng(0).normal(size=(6, 3))}, 2, 1.)
    with pytest.raises(DataError, match='too few'):
        neural_benchmark(recordings, 'IT')


@pytest.mark.slow
def test_v1_property_suite_as_a_column(model, recordings):
    """Minutes: the offline V1 property suite on the VOneBlock, next to the recordings' columns."""
    mapping = map_layers(model, recordings, layers=['vone_block', 'model.layer1.0'],
                         include_v1_properties=['vone_block'], progress=False)
    assert mapping.regions['V1-properties'] == 'V1'
    assert np.isfinite(mapping.scores.loc['vone_block', 'V1-properties'])
    assert np.isnan(mapping.scores.loc['model.layer1.0', 'V1-properties'])  # not requested: not run
    assert len(mapping.v1_properties['vone_block']) == 7
