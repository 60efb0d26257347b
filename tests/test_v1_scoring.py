"""Scoring V1 on the offline Marques2020 property benchmarks.

Fast tests cover the pieces; the end-to-end runs go through subprocesses so each gets a fresh
result cache (Brain-Score reads RESULTCACHING_HOME when it is imported).
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vonenet_brainscore.errors import VOneNetError
from vonenet_brainscore.scoring.v1_properties.figures import plot_property, property_histograms
from vonenet_brainscore.scoring.v1_properties.registry import OFFLINE_BENCHMARKS
from vonenet_brainscore.brain.v1_window import STIMULUS_CENTRE_DEG, WINDOW_RADIUS_DEG
from vonenet_brainscore.scoring.v1_properties.score import BenchmarkResult, resolve_benchmarks
from vonenet_brainscore.vone.block import VOneBlock


def test_resolve_benchmarks():
    assert resolve_benchmarks(['v1-properties']) == list(OFFLINE_BENCHMARKS)
    assert resolve_benchmarks(['Marques2020_DeValois1982-pref_or']) == ['Marques2020_DeValois1982-pref_or']
    with pytest.raises(VOneNetError, match="only Brain-Score's S3"):
        resolve_benchmarks(['Marques2020_Ringach2002-or_bandwidth'])
    with pytest.raises(VOneNetError, match='unknown V1 property benchmark'):
        resolve_benchmarks(['Marques2020_nope'])


def test_window_holds_every_unit_that_can_be_selected():
    """Units whose receptive-field centre can fall within 0.15 deg of the stimulus lie within
    filter half-width + patch radius + 0.15 deg of it, per axis; the window must contain them all."""
    block = VOneBlock(noise_mode=None)
    r0, r1, c0, c1 = block.units_within(STIMULUS_CENTRE_DEG, WINDOW_RADIUS_DEG)
    ppd = 224 / 8
    centres = (np.arange(56) * 4 + 0.5 - 112) / ppd
    reach = (25 // 2) / ppd + 1 / 6 + 0.15  # filter half-width, mapping patch radius, selection radius
    needed = np.flatnonzero(np.abs(centres - 0.5) <= reach)
    assert r0 <= needed[0] and needed[-1] < r1 and c0 <= needed[0] and needed[-1] < c1
    assert (r1 - r0) * (c1 - c0) < 56 * 56 / 20  # and it is small


def test_figure_shows_both_distributions(tmp_path):
    bins = np.array([0.5, 1, 2, 4, 8])
    result = BenchmarkResult(model='test-model', settings='none', benchmark='Marques2020_DeValois1982-peak_sf', score=0.5, raw=0.48, ceiling=0.96,
                             error=0.01, property_name='peak_spatial_frequency',
                             model_values=np.array([0.6, 0.7, 3, 100.0]),
                             primate_values=np.array([1.5, 1.5, 3, 5]), bins=bins)
    primate, model = property_histograms(result)
    np.testing.assert_allclose(primate, [0, 0.5, 0.25, 0.25])
    np.testing.assert_allclose(model, [0.5, 0, 0.25, 0.25])  # 100 is clipped into the last bin, as the metric does
    path = plot_property(result, tmp_path / 'figure.png')
    assert path.stat().st_size > 5000


SCORE_TINY = textwrap.dedent('''
    import json, sys
    import numpy as np
    from vonenet_brainscore import build_vonenet
    from vonenet_brainscore.brain.model import VOneNetBrainModel
    from vonenet_brainscore.brain.commitments import load_commitment
    from vonenet_brainscore.brain.extraction import VOneNetActivations
    from vonenet_brainscore.preprocessing import brainscore_preprocessing
    from vonenet_brainscore.brain.v1_window import around_property_stimuli
    from vonenet_brainscore.scoring.v1_properties.score import score_brain_model

    network = build_vonenet(None, simple_channels=8, complex_channels=8, noise_mode=None)
    # Same Gabor arithmetic in both pipelines (the crops use 'grouped'): the benchmark's neuron
    # selection thresholds responses, so a float32 rounding difference can flip a borderline unit.
    network.vone_block.method = 'grouped'
    if sys.argv[2] == 'stock':  # Brain-Score's own wrapper and commitment, full V1 map
        from brainscore_vision.model_helpers.activations.pytorch import PytorchWrapper
        from brainscore_vision.model_helpers.brain_transformation import ModelCommitment
        wrapper = PytorchWrapper(model=network, preprocessing=brainscore_preprocessing(224),
                                 identifier='tiny-vone-stock', batch_size=64)
        model = ModelCommitment(identifier='tiny-vone-stock', activations_model=wrapper, layers=['vone_block'],
                                region_layer_map={'V1': 'vone_block'}, visual_degrees=8)
    else:
        activations = VOneNetActivations(network, identifier='tiny-vone-window',
                                         preprocessing=brainscore_preprocessing(224), batch_size=64,
                                         v1_window=around_property_stimuli(network.vone_block))
        model = VOneNetBrainModel(activations.identifier, activations, load_commitment('resnet50'))
    # the stock run goes through Brain-Score's files all the way (no in-memory screen)
    results = score_brain_model(model, [sys.argv[1]], progress=False, fast=sys.argv[2] != 'stock')
    json.dump([r.as_dict() for r in results], sys.stdout)
''')


def _score_tiny(tmp_path, benchmark, mode):
    env = {**os.environ, 'RESULTCACHING_HOME': str(tmp_path / f'cache-{mode}'), 'MPLBACKEND': 'Agg',
           # property results are cached (as in a real run); stock activations are not written to disk
           'RESULTCACHING_DISABLE': 'brainscore_vision.model_helpers.activations.core.ActivationsExtractorHelper'}
    done = subprocess.run([sys.executable, '-c', SCORE_TINY, benchmark, mode], env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])[0]


def test_small_model_scores_offline_through_brainscore(tmp_path):
    result = _score_tiny(tmp_path, 'Marques2020_DeValois1982-pref_or', 'window')
    assert result['benchmark'] == 'Marques2020_DeValois1982-pref_or'
    assert 0 < result['score'] <= 1 and result['model_neurons'] > 0
    assert abs(result['ceiling'] - 0.962) < 0.002  # the README's tolerance


@pytest.mark.slow
def test_windowed_score_equals_the_stock_pipeline_score(tmp_path):
    """Our windowed pipeline gives the score of Brain-Score's stock pipeline (PytorchWrapper,
    ModelCommitment, full V1 map) for the same VOneBlock."""
    benchmark = 'Marques2020_Cavanaugh2002-surround_suppression_index'
    windowed = _score_tiny(tmp_path, benchmark, 'window')
    full = _score_tiny(tmp_path, benchmark, 'stock')
    assert windowed['model_neurons'] == full['model_neurons'] > 0
    assert windowed['raw'] == pytest.approx(full['raw'], abs=1e-9)


SCORE_PUBLISHED_BLOCK = textwrap.dedent('''
    import json, sys
    import torch
    from torch import nn

    benchmarks = sys.argv[1].split(',')
    if sys.argv[2] == 'ours':  # the main job's route (V1 window, in-memory screen, our extractor)
        from vonenet_brainscore.scoring.v1_properties.score import score_v1_properties
        results = score_v1_properties('vonenet_resnet50_nonoise', benchmarks, pretrained=False, progress=False)
        json.dump([r.as_dict() for r in results], sys.stdout)
        sys.exit()

    # Brain-Score's stock pipeline (PytorchWrapper, ModelCommitment, its placement of the stimuli on
    # screen through files) on the published VOneBlock restricted to the window of units the
    # benchmarks can select; the full map would be a 22.7 GB assembly.
    from brainscore_vision.model_helpers.activations.pytorch import PytorchWrapper
    from brainscore_vision.model_helpers.brain_transformation import ModelCommitment
    from vonenet_brainscore import get_model
    from vonenet_brainscore.preprocessing import brainscore_preprocessing
    from vonenet_brainscore.brain.v1_window import STIMULUS_CENTRE_DEG, WINDOW_RADIUS_DEG
    from vonenet_brainscore.scoring.v1_properties.score import score_brain_model

    class WindowOfV1(nn.Module):
        """The VOneBlock's units at output rows r0:r1, columns c0:c1 of its 56 x 56 map: with stride
        4 and 25 px filters (padding 12), output (i, j) reads input rows 4i - 12 .. 4i + 12."""
        def __init__(self, block, window):
            super().__init__()
            self.block, self.window = block, window

        def forward(self, images):
            r0, r1, c0, c1 = self.window
            crop = images[:, :, 4 * r0 - 12:4 * (r1 - 1) + 13, 4 * c0 - 12:4 * (c1 - 1) + 13]
            return self.block.output(self.block.noise_f(self.block.gabors_f(crop, padding=0)))

    block = get_model('resnet50', pretrained=False, noise_mode=None).vone_block.eval()
    assert block.config.ksize == 25 and block.stride == 4
    network = nn.Sequential()
    network.add_module('v1', WindowOfV1(block, block.units_within(STIMULUS_CENTRE_DEG, WINDOW_RADIUS_DEG)))
    wrapper = PytorchWrapper(model=network, preprocessing=brainscore_preprocessing(224),
                             identifier='published-voneblock-stock-window', batch_size=64)
    model = ModelCommitment(identifier=wrapper.identifier, activations_model=wrapper, layers=['v1'],
                            region_layer_map={'V1': 'v1'}, visual_degrees=8)
    results = score_brain_model(model, benchmarks, progress=False, fast=False)
    json.dump([r.as_dict() for r in results], sys.stdout)
''')


@pytest.mark.slow
def test_published_voneblock_scores_as_in_brainscores_stock_pipeline(tmp_path):
    """The main job's route for the published 512-channel VOneBlock (noise off, so both runs see the
    same responses) against Brain-Score's stock pipeline, on the orientation and size benchmarks:
    the same neurons selected and the same scores."""
    benchmarks = 'Marques2020_DeValois1982-pref_or,Marques2020_Cavanaugh2002-surround_suppression_index'
    runs = {}
    for route in ('stock', 'ours'):
        env = {**os.environ, 'RESULTCACHING_HOME': str(tmp_path / f'cache-{route}'), 'MPLBACKEND': 'Agg',
               'BRAINSCORE_HOME': str(tmp_path / f'brain-score-{route}'),
               'RESULTCACHING_DISABLE': 'brainscore_vision.model_helpers.activations.core.ActivationsExtractorHelper'}
        done = subprocess.run([sys.executable, '-c', SCORE_PUBLISHED_BLOCK, benchmarks, route], env=env,
                              capture_output=True, text=True, timeout=2400)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[route] = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r['benchmark'] for r in runs['ours']] == benchmarks.split(',')
    for ours, stock in zip(runs['ours'], runs['stock']):
        assert ours['benchmark'] == stock['benchmark']
        assert ours['model_neurons'] == stock['model_neurons'] > 100
        for key in ('score', 'raw', 'ceiling'):
            assert ours[key] == pytest.approx(stock[key], abs=1e-6), (ours['benchmark'], key)


@pytest.mark.slow
def test_cli_scores_all_seven(tmp_path):
    output = tmp_path / 'results.json'
    env = {**os.environ, 'RESULTCACHING_HOME': str(tmp_path / 'cache'), 'MPLBACKEND': 'Agg'}
    env.pop('RESULTCACHING_DISABLE', None)
    done = subprocess.run([sys.executable, '-m', 'vonenet_brainscore.cli', 'score', 'vonenet_resnet50',
                           '--untrained', '--output', str(output), '--quiet'], env=env, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(output.read_text())
    assert [r['benchmark'] for r in records] == list(OFFLINE_BENCHMARKS)
    assert all({'benchmark', 'score', 'raw', 'ceiling'} <= set(r) for r in records)
    assert records[0]['model'].startswith('vonenet_resnet50_untrained@') and 'weights=untrained' in records[0]['settings']
    assert output.with_suffix('.csv').exists()
    assert len(list(output.with_suffix('').glob('*.png'))) == 7


def test_without_weights_the_v1_score_falls_back_only_when_v1_is_the_voneblock(monkeypatch, caplog):
    """V1 = the fixed, seeded VOneBlock: its scores cannot depend on the back-end, so the untrained one is
    used, tagged and announced. A back-end layer as V1 would depend on it: then missing weights are an error."""
    from vonenet_brainscore.errors import CheckpointError, WeightsUnavailableError
    from vonenet_brainscore.scoring.v1_properties.score import score_v1_properties
    monkeypatch.setenv('VONENET_BRAINSCORE_MIRROR', 'http://127.0.0.1:9/')
    with pytest.raises(WeightsUnavailableError, match='voneresnet50_e70.pth.tar'):
        score_v1_properties('vonenet_resnet50', ['v1-properties'], layer='model.layer2', progress=False)
    with pytest.raises(CheckpointError, match='/no/such/file.pth.tar'):  # a file asked for: never replaced
        score_v1_properties('vonenet_resnet50', ['v1-properties'], weights_path='/no/such/file.pth.tar',
                            progress=False)
    # The model is built (with the untrained back-end) before the benchmark ids are read: an unknown id
    # shows the fallback happened without running a benchmark.
    with caplog.at_level('WARNING'), pytest.raises(VOneNetError, match='unknown V1 property benchmark'):
        score_v1_properties('vonenet_resnet50', ['no-such-benchmark'], progress=False)
    assert "do not depend on the back-end" in caplog.text and "tagged '_untrained'" in caplog.text
