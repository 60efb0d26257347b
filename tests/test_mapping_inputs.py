"""Degenerate layer-mapping scores: a negative correlation or a ceiling <= 0 is flagged, never the best layer.

Brain-Score ceils a neural score as r^2 / ceiling: a negative correlation r becomes a positive score,
and a negative ceiling (repetitions that disagree) gives negative scores. Neither says how much of
the explainable variance a layer explains.
"""
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainscore_core.supported_data_standards.brainio.assemblies import NeuronRecordingAssembly

from vonenet_brainscore.cli import main
from vonenet_brainscore.scoring.mapping import LayerMapping
from vonenet_brainscore.scoring.recordings import save_recordings

LAYERS = ['vone_block', 'model.layer1.0', 'model.layer2.0']
IT, V4 = 'rec.IT-pls', 'rec.V4-pls'


def _mapping(raw_it, raw_v4, ceiling_it=0.5, ceiling_v4=0.5):
    """A mapping as map_layers builds it, with Brain-Score's ceiled score r^2 / ceiling."""
    raw = pd.DataFrame({IT: raw_it, V4: raw_v4}, index=pd.Index(LAYERS, name='layer'))
    scores = pd.DataFrame({IT: np.square(raw_it) / ceiling_it, V4: np.square(raw_v4) / ceiling_v4},
                          index=raw.index)
    return LayerMapping(model='test-model', scores=scores, raw=raw, ceilings={IT: ceiling_it, V4: ceiling_v4},
                        regions={IT: 'IT', V4: 'V4'}, committed={'IT': 'model.layer2.0', 'V4': 'model.layer1.0'})


def test_a_negative_correlation_is_never_the_best_layer():
    # vone_block anti-correlates strongly: r^2 / ceiling = 1.62, the highest "score"; layer2.0 is the best real one.
    mapping = _mapping(raw_it=[-0.9, -0.6, 0.5], raw_v4=[0.3, 0.6, 0.4])
    best = mapping.best_layers()
    assert best.loc['IT', 'best_layer'] == 'model.layer2.0'
    assert best.loc['IT', 'best_score'] == pytest.approx(0.5)
    assert best.loc['IT', 'excluded_layers'] == 'vone_block, model.layer1.0'
    assert best.loc['V4', 'best_layer'] == 'model.layer1.0'
    reasons = mapping.degenerate()
    assert set(reasons) == {('vone_block', IT), ('model.layer1.0', IT)}
    assert 'negative correlation' in reasons['vone_block', IT] and 'outside [0, 1]' in reasons['vone_block', IT]


def test_a_ceiling_at_or_below_zero_leaves_the_region_without_a_best_layer():
    mapping = _mapping(raw_it=[0.2, 0.5, 0.4], raw_v4=[0.3, 0.9, 0.4], ceiling_v4=-0.17)
    assert mapping.scores[V4].min() < -4  # what Brain-Score's r^2 / ceiling gives
    best = mapping.best_layers()
    assert best.loc['V4', 'best_layer'] is None and math.isnan(best.loc['V4', 'best_score'])
    assert best.loc['IT', 'best_layer'] == 'model.layer1.0'
    assert all('ceiling -0.17 <= 0' in mapping.degenerate()[layer, V4] for layer in LAYERS)


@pytest.mark.parametrize('ceiling', [0.0, float('nan')])
def test_zero_or_nan_ceilings_are_degenerate(ceiling):
    with np.errstate(divide='ignore', invalid='ignore'):
        mapping = _mapping(raw_it=[0.2, 0.5, 0.4], raw_v4=[0.3, 0.9, 0.4], ceiling_v4=ceiling)
    assert {key for key in mapping.degenerate() if key[1] == V4} == {(layer, V4) for layer in LAYERS}
    assert mapping.best_layers().loc['V4', 'best_layer'] is None


def test_scores_within_rounding_of_one_are_kept():
    mapping = _mapping(raw_it=[0.2, 0.5, 0.7072], raw_v4=[0.3, 0.6, 0.4])  # 0.7072^2 / 0.5 = 1.0003
    assert mapping.degenerate() == {}
    assert mapping.best_layers().loc['IT', 'best_layer'] == 'model.layer2.0'


def test_degenerate_scores_are_marked_in_table_json_and_figure(tmp_path):
    mapping = _mapping(raw_it=[-0.9, 0.3, 0.5], raw_v4=[0.3, 0.6, 0.4], ceiling_v4=-0.17)
    table = mapping.formatted_scores()
    assert table.loc['vone_block', IT] == '1.620 !' and table.loc['model.layer2.0', IT] == '0.500'
    assert table.loc['model.layer1.0', V4].endswith(' !')
    messages = mapping.degenerate_messages()
    assert any("layer 'vone_block' on region IT" in message and 'negative correlation' in message
               for message in messages)
    assert sum('on region V4' in message for message in messages) == len(LAYERS)
    files = mapping.save(tmp_path)
    saved = json.loads(files['json'].read_text())
    flagged = {(entry['layer'], entry['benchmark']) for entry in saved['degenerate']}
    assert flagged == {('vone_block', IT)} | {(layer, V4) for layer in LAYERS}
    rows = {row['region']: row for row in saved['best_layers']}
    assert rows['IT']['best_layer'] == 'model.layer2.0' and rows['V4']['best_layer'] is None
    with Image.open(files['heatmap']) as image:
        pixels = np.asarray(image.convert('RGB')).reshape(-1, 3)
    grey = np.all(np.abs(pixels.astype(int) - 191) <= 2, axis=1)  # the hatched degenerate cells' face colour
    assert grey.sum() > 500


# --- end to end: recordings whose repetitions disagree --------------------------------------------

@pytest.fixture(scope='module')
def disagreeing_recordings(tmp_path_factory):
    """20 stimuli; V4 neurons repeat their responses, IT neurons answer the second time with the opposite
    of the first (a negative split-half ceiling)."""
    folder = tmp_path_factory.mktemp('disagreeing')
    stimuli = folder / 'stimuli'
    stimuli.mkdir()
    rng = np.random.default_rng(0)
    ids = [f'img{i:02d}' for i in range(20)]
    for sid in ids:
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype('uint8')).save(stimuli / f'{sid}.png')
    signal = rng.normal(size=(20, 8))
    noise = lambda: 0.3 * rng.normal(size=(20, 8))  # noqa: E731
    first = np.concatenate([signal + noise(), signal + noise()], axis=1)
    second = np.concatenate([signal + noise(), -signal + noise()], axis=1)
    recordings = NeuronRecordingAssembly(np.concatenate([first, second]), dims=['presentation', 'neuroid'], coords={
        'stimulus_id': ('presentation', ids * 2), 'repetition': ('presentation', np.repeat([0, 1], 20)),
        'neuroid_id': ('neuroid', [f'n{i}' for i in range(16)]), 'region': ('neuroid', ['V4'] * 8 + ['IT'] * 8)})
    return save_recordings(recordings, folder / 'recordings.nc'), stimuli


def test_map_layers_flags_a_negative_ceiling_and_picks_no_best_layer(disagreeing_recordings, tmp_path, capsys):
    data, stimuli = disagreeing_recordings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # sklearn's PLS warns on every fold of such tiny data
        assert main(['map-layers', 'vonenet_resnet50_nonoise', '--untrained', '--data', str(data), '--stimuli',
                     str(stimuli), '--layers', 'vone_block', 'model.layer1.0', '--batch-size', '20', '--output',
                     str(tmp_path / 'out'), '--quiet']) == 0
    out, err = capsys.readouterr()
    saved = json.loads((tmp_path / 'out' / 'layer_mapping.json').read_text())
    ceilings = {entry['region']: entry['ceiling'] for entry in saved['benchmarks']}
    assert ceilings['IT'] < 0 < ceilings['V4']
    rows = {row['region']: row for row in saved['best_layers']}
    assert rows['IT']['best_layer'] is None
    assert rows['V4']['best_layer'] in ('vone_block', 'model.layer1.0')
    assert {entry['layer'] for entry in saved['degenerate'] if entry['region'] == 'IT'} == {'vone_block',
                                                                                           'model.layer1.0'}
    assert not any(entry['region'] == 'V4' for entry in saved['degenerate'])
    for layer in ('vone_block', 'model.layer1.0'):
        assert f"warning: layer '{layer}' on region IT" in err
    assert ' !' in out and 'left out of the best-layer choice' in out
