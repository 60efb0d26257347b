"""Brain-Score's own entry points (``brainscore_vision.score``, ``python -m brainscore_vision score``) run the
seven offline Marques2020 benchmarks on our locally installed plugin with no network, and give the score
of ``vonenet-brainscore score``.

The runs happen on a simulated scoring machine with this package (``scoring_machine.py``, as in
test_plugin.py): the plugin is installed there by the command line, never into this environment's
Brain-Score. Every run has the network cut by a ``sitecustomize`` on its PYTHONPATH (every
``connect`` and name lookup to anything but the loopback interface raises and is logged), so a
fall-back to S3 fails the test instead of going unnoticed.
"""
import json
import re
import textwrap
import zipfile

import numpy as np
import pytest

from published_checkpoint import published_checkpoint
from scoring_machine import make_scoring_machine
from vonenet_brainscore import cli
from vonenet_brainscore.brain.plugin.install import PLUGIN_NAME
from vonenet_brainscore.submission import render_plugin

UNREACHABLE = 'http://127.0.0.1:9/'
BENCHMARK = 'Marques2020_DeValois1982-pref_or'
IDENTIFIER = 'vonenet_resnet50_nonoise'  # no noise trials: the fastest of ours
SEED = 3

NO_NETWORK = textwrap.dedent('''
    """Test guard: no network except the loopback interface; every attempt is logged to $NETWORK_LOG."""
    import os, socket
    _log = os.environ.get('NETWORK_LOG')
    _connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def _note(what):
        if _log:
            with open(_log, 'a') as log:
                log.write(what + '\\n')

    def _local(host):
        return str(host) in ('127.0.0.1', 'localhost', '::1') or isinstance(host, (bytes, int))

    def connect(self, address):
        if isinstance(address, tuple) and not _local(address[0]):
            _note(f'connect {address}')
            raise OSError(f'network disabled by the test: {address}')
        return _connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _local(host):
            _note(f'getaddrinfo {host}')
            raise socket.gaierror(f'network disabled by the test: {host}')
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
    if os.environ.get('TEST_NUMPY_SEED'):  # what a caller of brainscore_vision.score may do first
        import numpy
        numpy.random.seed(int(os.environ['TEST_NUMPY_SEED']))
''')


# --- the submission zip never serves local data --------------------------------------------------------------

def test_only_the_local_plugin_replaces_brainscores_data_loaders(tmp_path):
    """The zip for brain-score.org must score against Brain-Score's S3 data: none of its files calls the
    registration; the local plugin's __init__ does (so this test can fail both ways)."""
    local = render_plugin([IDENTIFIER], carry_code=False)['__init__.py'].decode()
    assert re.search(r'^register_for_local_plugin\(\)$', local, re.M)
    out = tmp_path / 'vonenet_resnet50.zip'
    assert cli.main(['submission', 'vonenet_resnet50', str(out)]) == 0
    with zipfile.ZipFile(out) as archive:
        files = {name: archive.read(name).decode('utf-8', 'replace') for name in archive.namelist()
                 if name.endswith('.py')}
    plugin = {name.rsplit('/', 1)[-1]: text for name, text in files.items() if name.count('/') == 3}
    assert {'__init__.py', 'model.py'} <= set(plugin)  # <root>/models/<plugin>/<file>
    for name in ('__init__.py', 'model.py'):  # what Brain-Score imports: no registration, not even named
        assert 'register_for_local_plugin' not in plugin[name] and 'install_offline_data' not in plugin[name]
    for name, text in files.items():  # and no carried module registers anything when imported
        at_import = [line for line in text.splitlines()
                     if re.match(r'(\w+\.)*(register_for_local_plugin|install_offline_data)\(', line)]
        assert not at_import, f'{name} replaces data loaders when imported: {at_import}'
        assert not re.search(r"^(data_registry|stimulus_set_registry)\[", text, re.M), name
    assert not [name for name in files if '/data/' in name]  # and it is no data plugin


# --- on a scoring machine with the local plugin ---------------------------------------------------------------

@pytest.fixture(scope='module')
def machine(tmp_path_factory):
    machine = make_scoring_machine(tmp_path_factory.mktemp('entry-points'), with_our_package=True)
    guard = machine.root / 'guard'
    guard.mkdir()
    (guard / 'sitecustomize.py').write_text(NO_NETWORK)
    machine.guard = guard
    done = machine.run(['-m', 'vonenet_brainscore.cli', 'plugin', 'install'], env=_env(machine, machine.root / 'h'))
    assert done.returncode == 0, done.stderr[-3000:]
    return machine


def _env(machine, home, **extra):
    return machine.env(BS_INSTALL_DEPENDENCIES='no', VONENET_BRAINSCORE_MIRROR=UNREACHABLE,
                       VONENET_BRAINSCORE_HOME=str(home), PYTHONPATH=str(machine.root / 'guard'),
                       NETWORK_LOG=str(machine.root / 'network.log'), **extra)


def _network_attempts(machine):
    log = machine.root / 'network.log'
    return log.read_text().splitlines() if log.exists() else []


REGISTRIES = textwrap.dedent('''
    import json
    import brainscore_vision
    from brainscore_core.plugin_management.import_plugin import ImportPlugin
    try:
        brainscore_vision.load_model('vonenet_resnet50_nonoise')  # imports our plugin; no weights here
    except Exception as error:
        print('load_model:', type(error).__name__)
    blank = brainscore_vision.load_stimulus_set('Marques2020_blank')  # through Brain-Score's own loader
    folders = {name: ImportPlugin('brainscore_vision', 'data', name).plugin_dirname
               for name in ('DeValois1982a', 'Ringach2002')}
    print(json.dumps({
        'folders': folders,
        'offline': {name: hasattr(brainscore_vision.data_registry[name], '_vonenet_offline')
                    for name in ('DeValois1982a', 'DeValois1982b', 'Schiller1976c', 'Cavanaugh2002a',
                                 'Ringach2002', 'FreemanZiemba2013_V1_properties')},
        'blank': [blank.identifier, len(blank), str(blank.get_stimulus(blank['stimulus_id'].values[0]))]}))
''')


def test_importing_the_local_plugin_serves_the_offline_data_through_brainscores_registries(machine, tmp_path):
    """Brain-Score's ``load_model`` imports our plugin first (even when the weights are missing); from then
    on Brain-Score's own ``load_stimulus_set`` serves our generated images, offline; the data of the seven
    offline benchmarks are ours, the S3-only ones Brain-Score's; and each identifier is still registered
    by exactly one data plugin folder (Brain-Score's ``marques2020``), which locate_plugin asserts."""
    home = tmp_path / 'home'
    done = machine.run(['-c', REGISTRIES], env=_env(machine, home))
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'load_model: WeightsUnavailableError' in done.stdout
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found['folders'] == {'DeValois1982a': 'marques2020', 'Ringach2002': 'marques2020'}
    assert found['offline'] == {'DeValois1982a': True, 'DeValois1982b': True, 'Schiller1976c': True,
                                'Cavanaugh2002a': True, 'Ringach2002': False,
                                'FreemanZiemba2013_V1_properties': False}
    assert found['blank'][:2] == ['Marques2020_blank', 1] and found['blank'][2].startswith(str(home))
    assert [a for a in _network_attempts(machine) if 'amazonaws' in a] == []


SCORE = textwrap.dedent('''
    import sys
    import brainscore_vision
    score = brainscore_vision.score(model_identifier=sys.argv[1], benchmark_identifier=sys.argv[2])
    print('SCORED', repr(float(score.values)), repr(float(score.attrs['raw'].values)))
''')


@pytest.mark.slow
def test_brainscore_entry_points_give_our_clis_score_offline(machine, tmp_path, reference):
    """``vonenet-brainscore score``, ``brainscore_vision.score`` and ``python -m brainscore_vision score``:
    the same model (published-format checkpoint in the cache), the same seed, no network: one score.
    Brain-Score's route records the V1 window per call (without it the receptive-field recording alone
    would be a 22.7 GB assembly); the equal score shows it selected the same neurons."""
    home = tmp_path / 'home'
    (home / 'weights').mkdir(parents=True)
    published_checkpoint(reference, 'resnet50', home / 'weights' / 'voneresnet50_e70.pth.tar', 'neuronal')
    lean = 'brainscore_vision.model_helpers.activations.core.ActivationsExtractorHelper'  # as a real run caches

    def env(route, **extra):
        return _env(machine, home, RESULTCACHING_HOME=str(tmp_path / f'cache-{route}'), RESULTCACHING_DISABLE=lean,
                    **extra)

    output = tmp_path / 'ours.json'
    ours = machine.run(['-m', 'vonenet_brainscore.cli', 'score', IDENTIFIER, '--benchmarks', BENCHMARK,
                        '--seed', str(SEED), '--output', output, '--quiet'], env=env('ours'), timeout=1800)
    assert ours.returncode == 0, ours.stderr[-3000:]
    record, = json.loads(output.read_text())
    assert 'weights=sha1-' in record['settings']  # the checkpoint, not the untrained fall-back

    theirs = machine.run(['-c', SCORE, IDENTIFIER, BENCHMARK], env=env('score', TEST_NUMPY_SEED=str(SEED)),
                         timeout=1800)
    assert theirs.returncode == 0, theirs.stderr[-3000:]
    score, raw = map(float, theirs.stdout.split('SCORED')[-1].split())
    assert score == pytest.approx(record['score'], abs=1e-12) and raw == pytest.approx(record['raw'], abs=1e-12)

    # Brain-Score's command line, with the result cache of the run above (the benchmarks cache their
    # recordings per model identifier; recording again would only repeat the run above, for 4 minutes):
    # its entry point, plugin imports, registries, data and seeded metric give the same score.
    module = machine.run(['-m', 'brainscore_vision', 'score', '--model_identifier', IDENTIFIER,
                          '--benchmark_identifier', BENCHMARK], env=env('score', TEST_NUMPY_SEED=str(SEED)),
                         timeout=1800)
    assert module.returncode == 0, module.stderr[-3000:]
    printed = float(re.search(r'array\(([-0-9.e]+)\)', module.stdout).group(1))  # fire prints the Score
    assert printed == pytest.approx(record['score'], abs=1e-6)
    assert _network_attempts(machine) == []


# --- the per-call V1 window of our brain model ---------------------------------------------------------------

def test_the_window_is_a_per_call_decision_with_the_full_maps_values():
    """A V1 recording of one of our placed Marques2020 sets records the window (the full map's values at
    those units) and leaves no window set; any other set records the full map."""
    from brainscore_core.supported_data_standards.brainio.stimuli import StimulusSet
    from vonenet_brainscore.brain.model import brain_model
    from vonenet_brainscore.errors import BrainModelError
    from vonenet_brainscore.scoring.v1_properties import stimuli
    from vonenet_brainscore.scoring.v1_properties.registry import install_offline_data, uninstall_offline_data
    from vonenet_brainscore.brain.v1_window import property_window_for, v1_window_for

    model = brain_model(IDENTIFIER, pretrained=False, batch_size=4)
    rng = np.random.default_rng(0)
    folder = stimuli.cache_root() / 'test-images'
    folder.mkdir(parents=True)
    from PIL import Image
    ids = ['a', 'b']
    for name in ids:
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(folder / f'{name}.png')

    def placed(identifier):
        stimulus_set = StimulusSet({'stimulus_id': ids, 'degrees': [8, 8]})
        stimulus_set.stimulus_paths = {i: str(folder / f'{i}.png') for i in ids}
        stimulus_set.identifier = identifier
        return stimulus_set

    model.start_recording('V1', [(70, 170)])
    ours = placed(f'{stimuli.ORIENTATION}--target8.00--sourceNone')
    assert property_window_for(model, ours) is None  # not served by our generated images: no window
    install_offline_data(progress=False)
    try:
        window = property_window_for(model, ours)
        assert window == v1_window_for(model) is not None
        windowed = model.look_at(ours)
        assert model.activations_model.v1_window is None  # undone after the call
        full = model.look_at(placed('some-other-set'))
        # The FreemanZiemba2013 texture set's units are selected on our windowed receptive-field map: windowed
        # too when centred where the window is, refused otherwise (the full map would select other units).
        texture = placed('FreemanZiemba2013_properties--target8.00--sourceNone')
        texture['position_y'], texture['position_x'] = 0.5, 0.5
        assert property_window_for(model, texture) == window
        texture['position_x'] = 1.5
        with pytest.raises(BrainModelError, match='not centred'):
            property_window_for(model, texture)
    finally:
        uninstall_offline_data()
    r0, r1, c0, c1 = window
    channels = model.network.vone_block.output_shape()[0]
    assert windowed.sizes['neuroid'] == (r1 - r0) * (c1 - c0) * channels
    assert full.sizes['neuroid'] == channels * 56 * 56
    side = full.transpose('presentation', 'neuroid').values.reshape(2, channels, 56, 56)
    np.testing.assert_allclose(windowed.transpose('presentation', 'neuroid').values.reshape(2, channels, r1 - r0, c1 - c0),
                               side[:, :, r0:r1, c0:c1], rtol=1e-5, atol=1e-6)
    model.start_recording('IT', [(70, 170)])
    assert property_window_for(model, ours) is None  # only V1 (the VOneBlock)
