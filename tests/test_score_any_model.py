"""``vonenet-brainscore score`` scores any Brain-Score model (``brainscore_vision.load_model``), commits V1
with ``--layer`` (no layer selection, which needs S3), estimates the memory of a full-map run, and scores
several models side by side (``--against``).

The scoring runs go through ``cli.main`` in a subprocess each: a fresh result cache (Brain-Score reads
RESULTCACHING_HOME at import) and the network cut (a ``sitecustomize`` that refuses every connection and
name lookup but the loopback's), so a fall-back to S3 fails the test.
"""
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

from vonenet_brainscore import cli
from vonenet_brainscore.errors import BrainModelError, V1MemoryError
from vonenet_brainscore.scoring.v1_properties.score import (RECEPTIVE_FIELD_IMAGES, BenchmarkResult, check_memory,
                                                    load_brain_model, plan_v1_run)

BENCHMARK = 'Marques2020_DeValois1982-pref_or'
FOREIGN = 'alexnet_random'  # a Brain-Score model that is not ours; random weights, loads offline

NO_NETWORK = textwrap.dedent('''
    import socket
    _connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def _local(host):
        return str(host) in ('127.0.0.1', 'localhost', '::1') or isinstance(host, (bytes, int))

    def connect(self, address):
        if isinstance(address, tuple) and not _local(address[0]):
            raise OSError(f'NETWORK ATTEMPT {address}')
        return _connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _local(host):
            raise socket.gaierror(f'NETWORK ATTEMPT {host}')
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
''')


def _score_cli(tmp_path, args, timeout=1800):
    """``cli.main(['score', *args])`` in a subprocess with no network and a fresh result cache."""
    guard = tmp_path / 'guard'
    guard.mkdir(exist_ok=True)
    (guard / 'sitecustomize.py').write_text(NO_NETWORK)
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(guard)] + sys.path), 'MPLBACKEND': 'Agg',
           'RESULTCACHING_HOME': str(tmp_path / 'cache'), 'VONENET_BRAINSCORE_MIRROR': 'http://127.0.0.1:9/',
           # the benchmarks' own results are cached, as in a real run; activations are not written to disk
           'RESULTCACHING_DISABLE': 'brainscore_vision.model_helpers.activations.core.ActivationsExtractorHelper'}
    code = 'import sys; from vonenet_brainscore import cli; sys.exit(cli.main(sys.argv[1:]))'
    return subprocess.run([sys.executable, '-c', code, 'score', *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


# --- fast: loading, committing, estimating ---------------------------------------------------------------------

def test_a_foreign_model_is_committed_at_the_layer_asked_for_and_its_memory_estimated():
    model = load_brain_model(FOREIGN, 'features.2')
    assert model.identifier == f'{FOREIGN}@V1=features.2'
    assert model.layer_model.region_layer_map == {'V1': 'features.2'}  # a plain map: no layer selection
    plan = plan_v1_run(model, windowed=False)
    assert plan.layer == 'features.2' and plan.units == 64 * 27 * 27  # AlexNet's first max-pool
    assert plan.estimate_bytes == 64 * 27 * 27 * RECEPTIVE_FIELD_IMAGES * 4
    assert '0.66 GB' in plan.describe() and 'full map' in plan.describe()
    check_memory(plan)  # fits
    with pytest.raises(V1MemoryError) as error:
        check_memory(replace(plan, available_bytes=plan.estimate_bytes))  # held about twice: does not fit
    message = str(error.value)
    assert FOREIGN in message and 'features.2' in message and '0.7 GB' in message and '--layer' in message


def test_a_foreign_model_without_a_region_map_needs_a_layer(capsys):
    with pytest.raises(BrainModelError, match='--layer'):
        load_brain_model(FOREIGN)
    assert cli.main(['score', FOREIGN, '--benchmarks', BENCHMARK, '--quiet']) == 2
    assert 'no region map of its own' in capsys.readouterr().err
    assert cli.main(['score', FOREIGN, '--layer', 'features.99', '--benchmarks', BENCHMARK, '--quiet']) == 2
    err = capsys.readouterr().err
    assert "'features.99' is not a layer of alexnet_random" in err and 'features.0' in err
    assert cli.main(['score', FOREIGN, '--untrained', '--layer', 'features.2', '--quiet']) == 2
    assert 'not a VOneNet' in capsys.readouterr().err
    assert cli.main(['score', 'vonenet_resnet50_nonoise', '--against', '@x', '--quiet']) == 2
    assert 'MODEL@LAYER' in capsys.readouterr().err


def test_side_by_side_figure_draws_every_model(tmp_path):
    from vonenet_brainscore.scoring.v1_properties.figures import plot_properties
    bins = np.array([0.5, 1, 2, 4, 8])

    def result(name, values):
        return BenchmarkResult(model=name, settings='none', benchmark='Marques2020_DeValois1982-peak_sf', score=0.5,
                               raw=0.48, ceiling=0.96, error=0.01, property_name='peak_spatial_frequency',
                               model_values=np.array(values), primate_values=np.array([1.5, 1.5, 3, 5]), bins=bins)
    one = plot_properties([('a', result('a', [0.6, 3]))], tmp_path / 'one.png')
    two = plot_properties([('a', result('a', [0.6, 3])), ('b', result('b', [5.0, 6.0, 7.0]))], tmp_path / 'two.png')
    assert two.stat().st_size > one.stat().st_size > 5000
    with pytest.raises(ValueError, match='one benchmark'):
        plot_properties([('a', result('a', [1.0])), ('b', replace(result('b', [1.0]), benchmark='other'))],
                        tmp_path / 'bad.png')


# --- end to end, offline -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_brainscore_model_that_is_not_ours_scores_offline_at_a_committed_layer(tmp_path):
    output = tmp_path / 'alexnet.json'
    done = _score_cli(tmp_path, [FOREIGN, '--layer', 'features.2', '--benchmarks', BENCHMARK, '--output', output,
                                 '--quiet'])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert 'NETWORK ATTEMPT' not in done.stdout + done.stderr
    assert 'memory: alexnet_random@V1=features.2: V1 = features.2 (full map): 46,656 units' in done.stderr
    record, = json.loads(output.read_text())
    assert record['model'] == f'{FOREIGN}@V1=features.2' and record['benchmark'] == BENCHMARK
    assert record['layer'] == 'features.2' and record['model_neurons'] > 0
    assert 0 <= record['score'] <= 1 and record['ceiling'] == pytest.approx(0.962, abs=0.005)
    assert (tmp_path / 'alexnet' / f'{BENCHMARK}.png').stat().st_size > 5000


@pytest.mark.slow
def test_two_models_side_by_side_write_one_table_and_one_figure_per_property(tmp_path):
    output = tmp_path / 'side.json'
    done = _score_cli(tmp_path, ['vonenet_resnet50_nonoise', '--against', f'{FOREIGN}@features.2', '--benchmarks',
                                 BENCHMARK, '--output', output, '--quiet'])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert 'NETWORK ATTEMPT' not in done.stdout + done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header[:2] == ['benchmark', 'vonenet_resnet50_nonoise_untrained'] and 'alexnet_random' in header
    assert 'V1 window (VOneBlock)' in done.stderr and '(full map)' in done.stderr
    records = json.loads(output.read_text())
    assert [(r['model'].split('@')[0], r['benchmark']) for r in records] == [
        ('vonenet_resnet50_nonoise_untrained', BENCHMARK), (FOREIGN, BENCHMARK)]
    # Brain-Score bootstraps the ceiling after the score, from the same global RNG: nearly, not exactly, equal
    assert records[0]['ceiling'] == pytest.approx(records[1]['ceiling'], abs=0.005)
    assert len(output.with_suffix('.csv').read_text().splitlines()) == 3
    figures = list(output.with_suffix('').glob('*.png'))
    assert [f.name for f in figures] == [f'{BENCHMARK}.png'] and figures[0].stat().st_size > 5000
