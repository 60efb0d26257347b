"""What a download may leave in the cache (issue 13, item 4), against a real loopback HTTP server.

The server sends real bytes: HTML pages with status 200, bodies without Content-Length, truncated
checkpoints, trickles and stalls. Nothing is mocked: downloads go through requests and the check
of the body through torch.load(weights_only=True).
"""
import io
import logging
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from vonenet_brainscore import CheckpointError, VOneNetError, WeightsUnavailableError, build_vonenet, get_model
from vonenet_brainscore.published import download
from vonenet_brainscore.published.download import download_file
from vonenet_brainscore.published.catalogue import model_record

HTML = (b'<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n'
        b'<body><form action="/login">Your session has expired</form></body></html>\n')


def checkpoint_bytes(n_values=300_000, arch='resnet50', state_dict=None):
    buffer = io.BytesIO()
    generator = torch.Generator().manual_seed(1)
    state_dict = state_dict if state_dict is not None else {'weight': torch.rand(n_values, generator=generator)}
    torch.save({'flags': {'arch': arch}, 'epoch': 0, 'state_dict': state_dict}, buffer)
    return buffer.getvalue()


CHECKPOINT = checkpoint_bytes()


class Server:
    """A threaded HTTP server on 127.0.0.1; each test says what a path answers with ``server.routes``."""

    def __init__(self):
        self.routes = {}  # path -> function(handler)
        self.requests = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(('127.0.0.1', 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={'poll_interval': 0.05},
                                        daemon=True)

    def url(self, path=''):
        host, port = self._httpd.server_address[:2]
        return f'http://{host}:{port}/{path.lstrip("/")}'

    def count(self, path):
        with self._lock:
            return self.requests.count('/' + path.lstrip('/'))

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def do_GET(self):
                with server._lock:
                    server.requests.append(self.path)
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404, 'Not Found')
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as it should
                self.close_connection = True

            def body(self, data, content_type='application/octet-stream', length=True):
                self.send_response(200)
                self.send_header('Content-Type', content_type)
                if length is True:
                    self.send_header('Content-Length', str(len(data)))
                elif length is not None:
                    self.send_header('Content-Length', str(length))
                self.send_header('Connection', 'close')
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

        return Handler

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)


@pytest.fixture
def server():
    with Server() as running:
        yield running


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv(download.HOME_ENV, str(tmp_path / 'cache'))
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    return tmp_path / 'cache'


def leftovers(folder):
    return sorted(p.name for p in Path(folder).glob('*')) if Path(folder).exists() else []


def sends(data, **kwargs):
    return lambda handler: handler.body(data, **kwargs)


# --- what is cached ---------------------------------------------------------------------------
def test_html_page_with_status_200_is_refused_and_not_cached(server, home):
    server.routes['/w.pth.tar'] = sends(HTML, content_type='text/html; charset=utf-8')
    destination = home / 'weights' / 'w.pth.tar'
    url = server.url('w.pth.tar')

    with pytest.raises(WeightsUnavailableError) as caught:
        download_file(url, destination, progress=False)

    message = str(caught.value)
    assert url in message and str(destination) in message
    assert 'HTML' in message and 'in place of the file' in message and 'text/html' in message
    assert 'nothing was cached' in message
    assert not destination.exists()
    assert [name for name in leftovers(destination.parent) if not name.endswith('.lock')] == []


def test_body_without_content_length_is_cached_only_if_it_is_a_checkpoint(server, home):
    server.routes['/good'] = sends(CHECKPOINT, length=None)
    server.routes['/cut'] = sends(CHECKPOINT[:len(CHECKPOINT) // 2], length=None)
    good, cut = home / 'weights' / 'good.pth.tar', home / 'weights' / 'cut.pth.tar'

    assert download_file(server.url('good'), good, progress=False) == good
    with pytest.raises(WeightsUnavailableError) as caught:
        download_file(server.url('cut'), cut, progress=False)

    assert good.read_bytes() == CHECKPOINT
    assert 'truncated or corrupt' in str(caught.value) and server.url('cut') in str(caught.value)
    assert not cut.exists()
    assert not download.sidecar_path(cut).exists()


def test_verified_download_records_size_and_sha256(server, home):
    import hashlib
    import json
    server.routes['/w'] = sends(CHECKPOINT)
    destination = home / 'weights' / 'w.pth.tar'

    download_file(server.url('w'), destination, progress=False)

    record = json.loads(download.sidecar_path(destination).read_text())
    assert record['sha256'] == hashlib.sha256(CHECKPOINT).hexdigest()
    assert record['size'] == len(CHECKPOINT)
    assert record['url'] == server.url('w')
    assert download.cache_state(destination) == download.VERIFIED


def test_mirror_serving_html_names_the_mirror_and_leaves_the_model_uncached(server, home, monkeypatch):
    record = model_record('resnet50')
    server.routes['/vonenet/' + record.filename] = sends(HTML, content_type='text/html')
    monkeypatch.setenv(download.MIRROR_ENV, server.url('vonenet'))

    with pytest.raises(WeightsUnavailableError) as caught:
        get_model('resnet50', progress=False)

    message = str(caught.value)
    assert download.MIRROR_ENV in message and server.url('vonenet') in message
    assert record.url in message and 'HTML' in message
    assert not record.cache_path.exists()  # so `vonenet-brainscore models` does not show it as cached
    assert record.cache_state == download.MISSING


def test_mirror_serving_another_architecture_is_not_cached(server, home, monkeypatch):
    record = model_record('resnet50')
    server.routes['/' + record.filename] = sends(checkpoint_bytes(10, arch='alexnet'))
    monkeypatch.setenv(download.MIRROR_ENV, server.url())

    with pytest.raises(WeightsUnavailableError, match='is a alexnet checkpoint but a resnet50 model was requested'):
        get_model('resnet50', progress=False)

    assert not record.cache_path.exists()


def test_mirror_serving_forged_flags_is_not_cached(server, home, monkeypatch):
    record = model_record('resnet50')
    forged = io.BytesIO()
    torch.save({'flags': {'arch': 'resnet50', 'simple_channels': 5_000_000}, 'state_dict': {}}, forged)
    server.routes['/' + record.filename] = sends(forged.getvalue())
    monkeypatch.setenv(download.MIRROR_ENV, server.url())

    with pytest.raises(WeightsUnavailableError, match='flag simple_channels=5000000 is out of range'):
        get_model('resnet50', progress=False)

    assert not record.cache_path.exists()


@pytest.fixture(scope='module')
def published_like():
    """A checkpoint in the published format (random weights), as the mirror serves it."""
    state = {f'module.{k}': v for k, v in build_vonenet('resnet50', noise_mode=None).state_dict().items()}
    buffer = io.BytesIO()
    torch.save({'flags': {'arch': 'resnet50', 'noise_mode': 'neuronal'}, 'epoch': 70, 'state_dict': state,
                'optimizer': {}}, buffer)
    return buffer.getvalue()


def test_published_model_downloads_once_and_loads_from_the_verified_cache(server, home, monkeypatch,
                                                                         published_like):
    record = model_record('resnet50')
    server.routes['/' + record.filename] = sends(published_like)
    monkeypatch.setenv(download.MIRROR_ENV, server.url())

    first = get_model('resnet50', progress=False)
    second = get_model('resnet50', progress=False, noise_mode=None)

    assert server.count(record.filename) == 1
    assert record.cache_state == download.VERIFIED
    assert second.vone_block.noise_mode is None and first.vone_block.noise_mode == 'neuronal'
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_cached_file_placed_by_hand_that_is_broken_says_to_delete_it(home, monkeypatch):
    record = model_record('resnet50')
    record.cache_path.parent.mkdir(parents=True)
    record.cache_path.write_bytes(HTML)  # e.g. cached by an older version from a bad mirror
    monkeypatch.setenv(download.MIRROR_ENV, 'http://127.0.0.1:9/')

    with pytest.raises(CheckpointError) as caught:
        get_model('resnet50', progress=False)

    message = str(caught.value)
    assert 'HTML' in message and str(record.cache_path) in message and 'downloaded again' in message


# --- a cached file that changed after it was verified -----------------------------------------
def test_truncated_cache_file_is_detected_and_downloaded_again(server, home, caplog):
    server.routes['/w'] = sends(CHECKPOINT)
    destination = home / 'weights' / 'w.pth.tar'
    download_file(server.url('w'), destination, progress=False)
    destination.write_bytes(CHECKPOINT[:1000])  # a disk filled up, a copy was cut short, ...

    with caplog.at_level(logging.WARNING, logger=download.__name__):
        download_file(server.url('w'), destination, progress=False)

    assert destination.read_bytes() == CHECKPOINT
    assert server.count('w') == 2
    assert any('differs from its verified download' in r.getMessage() and str(destination) in r.getMessage()
               for r in caplog.records if r.levelno >= logging.WARNING)
    assert download.cache_state(destination) == download.VERIFIED


def test_damaged_cache_file_of_the_same_size_is_detected(server, home):
    server.routes['/w'] = sends(CHECKPOINT)
    destination = home / 'weights' / 'w.pth.tar'
    download_file(server.url('w'), destination, progress=False)
    damaged = bytearray(CHECKPOINT)
    damaged[len(damaged) // 2] ^= 0xFF
    destination.write_bytes(bytes(damaged))  # the size is right, the mtime is not

    download_file(server.url('w'), destination, progress=False)

    assert destination.read_bytes() == CHECKPOINT
    assert server.count('w') == 2


def test_touched_but_intact_cache_file_is_not_downloaded_again(server, home):
    server.routes['/w'] = sends(CHECKPOINT)
    destination = home / 'weights' / 'w.pth.tar'
    download_file(server.url('w'), destination, progress=False)
    os.utime(destination, (time.time() + 100, time.time() + 100))

    download_file(server.url('w'), destination, progress=False)

    assert server.count('w') == 1
    assert download.cache_state(destination) == download.VERIFIED  # the record follows the new mtime


def test_changed_cache_file_that_cannot_be_downloaded_again_is_reported(server, home):
    server.routes['/w'] = sends(CHECKPOINT)
    destination = home / 'weights' / 'w.pth.tar'
    download_file(server.url('w'), destination, progress=False)
    destination.write_bytes(CHECKPOINT[:1000])
    del server.routes['/w']  # the server no longer has it

    with pytest.raises(WeightsUnavailableError) as caught:
        download_file(server.url('w'), destination, progress=False)

    message = str(caught.value)
    assert f'cached {destination} differs from its verified download' in message
    assert 'truncated' in message and '404' in message
    assert str(download.sidecar_path(destination)) in message
    assert destination.read_bytes() == CHECKPOINT[:1000]  # left as it was: only a verified file replaces it


# --- limits on a slow or endless server -------------------------------------------------------
def trickle(server, total=10 ** 7, interval=0.05):
    def route(handler):
        handler.send_response(200)
        handler.send_header('Content-Length', str(total))
        handler.end_headers()
        while not server.stop.is_set():
            handler.wfile.write(b'x')
            handler.wfile.flush()
            time.sleep(interval)
    return route


def test_trickling_server_hits_the_total_limit(server, home):
    server.routes['/slow'] = trickle(server)  # a byte every 50 ms: no single read ever times out
    destination = home / 'weights' / 'slow.pth.tar'
    started = time.monotonic()

    with pytest.raises(WeightsUnavailableError) as caught:
        download_file(server.url('slow'), destination, progress=False, timeout=5, total_timeout=1)

    assert time.monotonic() - started < 4
    assert 'total_timeout=1 s' in str(caught.value)
    assert not destination.exists() and list(destination.parent.glob('*.part')) == []


def test_server_that_stops_sending_hits_the_no_progress_limit(server, home):
    def stall(handler):
        handler.send_response(200)
        handler.send_header('Content-Length', str(len(CHECKPOINT)))
        handler.end_headers()
        handler.wfile.write(CHECKPOINT[:1000])
        handler.wfile.flush()
        server.stop.wait(30)
    server.routes['/stall'] = stall
    destination = home / 'weights' / 'stall.pth.tar'
    started = time.monotonic()

    with pytest.raises(WeightsUnavailableError) as caught:
        download_file(server.url('stall'), destination, progress=False, timeout=30, stall_timeout=0.5)

    assert time.monotonic() - started < 5
    assert 'sent nothing for 0.5 s' in str(caught.value) and 'after 1,000 bytes' in str(caught.value)
    assert not destination.exists() and list(destination.parent.glob('*.part')) == []


def test_endless_body_without_content_length_hits_the_size_limit(server, home):
    def endless(handler):
        handler.send_response(200)
        handler.end_headers()
        while not server.stop.is_set():
            handler.wfile.write(b'\0' * 65536)
    server.routes['/endless'] = endless
    server.routes['/big'] = sends(b'', length=10 ** 12)  # announces a terabyte
    destination = home / 'weights' / 'endless.pth.tar'

    with pytest.raises(WeightsUnavailableError, match='longer than max_bytes=1,000,000'):
        download_file(server.url('endless'), destination, progress=False, max_bytes=10 ** 6)
    with pytest.raises(WeightsUnavailableError, match='announces 1,000,000,000,000 bytes, more than max_bytes'):
        download_file(server.url('big'), destination, progress=False, max_bytes=10 ** 6)
    assert not destination.exists() and list(destination.parent.glob('*.part')) == []


# --- waiting for another process --------------------------------------------------------------
HOLD_LOCK = """
import sys, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print('locked', flush=True)
sys.stdin.read()  # until the test closes stdin
"""


@pytest.fixture
def lock_holder():
    holders = []

    def hold(destination):
        child = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(destination) + '.lock'],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        holders.append(child)
        assert child.stdout.readline().strip() == 'locked'
        return child

    yield hold
    for child in holders:
        if child.poll() is None:
            child.kill()
        child.wait(10)


def test_waiting_for_another_process_is_said_at_warning_level(server, home, lock_holder):
    server.routes['/w'] = sends(CHECKPOINT)
    destination = home / 'weights' / 'w.pth.tar'
    destination.parent.mkdir(parents=True)
    holder = lock_holder(destination)
    seen = []

    class ReleaseOnWaiting(logging.Handler):
        def emit(self, record):
            seen.append(record)
            if 'Waiting for another process' in record.getMessage():
                holder.stdin.close()  # the other process finishes (here: without a file)

    handler = ReleaseOnWaiting(level=logging.WARNING)  # what the CLI shows without --verbose
    logger = logging.getLogger(download.__name__)
    logger.addHandler(handler)
    safety_net = threading.Timer(15, holder.stdin.close)  # should the message never come
    safety_net.start()
    try:
        assert download_file(server.url('w'), destination, progress=False, wait_timeout=30) == destination
    finally:
        safety_net.cancel()
        logger.removeHandler(handler)

    waiting = [r for r in seen if 'Waiting for another process' in r.getMessage()]
    assert waiting and waiting[0].levelno == logging.WARNING
    assert str(destination) in waiting[0].getMessage() and '.lock' in waiting[0].getMessage()
    assert destination.read_bytes() == CHECKPOINT


def test_waiting_message_reaches_stderr_without_any_logging_setup(server, home, lock_holder):
    """A script (or the CLI) that configures no logging still shows the wait: WARNING is Python's default."""
    server.routes['/w'] = sends(CHECKPOINT)
    destination = home / 'weights' / 'w.pth.tar'
    destination.parent.mkdir(parents=True)
    holder = lock_holder(destination)
    code = ('import sys; from vonenet_brainscore.published.download import download_file; '
            'download_file(sys.argv[1], sys.argv[2], progress=False, wait_timeout=60)')
    child = subprocess.Popen([sys.executable, '-c', code, server.url('w'), str(destination)],
                             stderr=subprocess.PIPE, text=True)
    safety_net = threading.Timer(60, holder.stdin.close)
    safety_net.start()
    try:
        first_line = child.stderr.readline()
        holder.stdin.close()  # the other download ends
        rest = child.stderr.read()
        assert child.wait(60) == 0, rest
    finally:
        safety_net.cancel()
        if child.poll() is None:
            child.kill()
    assert 'Waiting for another process to finish downloading' in first_line and str(destination) in first_line
    assert destination.read_bytes() == CHECKPOINT


def test_waiting_too_long_for_another_process_gives_up_and_names_the_lock(server, home, lock_holder):
    server.routes['/w'] = sends(CHECKPOINT)
    destination = home / 'weights' / 'w.pth.tar'
    destination.parent.mkdir(parents=True)
    lock_holder(destination)
    started = time.monotonic()

    with pytest.raises(WeightsUnavailableError) as caught:
        download_file(server.url('w'), destination, progress=False, wait_timeout=0.5)

    assert time.monotonic() - started < 5
    assert 'another process has been downloading' in str(caught.value)
    assert str(destination) + '.lock' in str(caught.value)
    assert server.requests == []


# --- *.part files of killed processes ---------------------------------------------------------
def _ended_pid():
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait()
    return child.pid


def test_part_files_of_ended_processes_are_removed_and_live_ones_kept(server, home):
    server.routes['/w'] = sends(CHECKPOINT)
    folder = home / 'weights'
    folder.mkdir(parents=True)
    host = download._host()
    dead = folder / f'w.pth.tar.{_ended_pid()}-{host}.k1ll3d00.part'  # its process was killed
    old = folder / 'w.pth.tar.abc12300.part'  # unknown owner, untouched for two hours
    live = folder / f'w.pth.tar.{os.getppid()}-{host}.l1ve0000.part'  # a running process on this host
    recent = folder / 'w.pth.tar.xyz78900.part'  # unknown owner, written a moment ago
    other_host = folder / f'w.pth.tar.{_ended_pid()}-some-other-host.r3m0te00.part'  # pid means nothing here
    other_file = folder / f'x.pth.tar.{_ended_pid()}-{host}.n0tm1ne0.part'  # another destination's
    longer_name = folder / f'w.pth.tar.bak.{_ended_pid()}-{host}.n0tm1ne0.part'  # of w.pth.tar.bak, not w.pth.tar
    for part in (dead, old, live, recent, other_host, other_file, longer_name):
        part.write_bytes(b'partial')
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(longer_name, (two_hours_ago, two_hours_ago))

    download_file(server.url('w'), folder / 'w.pth.tar', progress=False)

    remaining = {p.name for p in folder.glob('*.part')}
    assert remaining == {live.name, recent.name, other_host.name, other_file.name, longer_name.name}


def test_part_files_are_cleaned_on_the_cached_path_too(server, home):
    server.routes['/w'] = sends(CHECKPOINT)
    destination = home / 'weights' / 'w.pth.tar'
    download_file(server.url('w'), destination, progress=False)
    dead = destination.parent / f'w.pth.tar.{_ended_pid()}-{download._host()}.k1ll3d00.part'
    dead.write_bytes(b'partial')

    download_file(server.url('w'), destination, progress=False)

    assert not dead.exists()
    assert server.count('w') == 1


def test_part_files_are_left_alone_while_another_process_holds_the_lock(home, lock_holder):
    destination = home / 'weights' / 'w.pth.tar'
    destination.parent.mkdir(parents=True)
    destination.write_bytes(CHECKPOINT)  # cached (by hand), so the cached path runs
    dead = destination.parent / f'w.pth.tar.{_ended_pid()}-{download._host()}.k1ll3d00.part'
    dead.write_bytes(b'partial')
    lock_holder(destination)

    download_file('http://127.0.0.1:9/w', destination, progress=False)

    assert dead.exists()


def test_a_killed_download_leaves_a_part_file_that_the_next_one_removes(server, home):
    server.routes['/slow'] = trickle(server, interval=0.01)
    destination = home / 'weights' / 'w.pth.tar'
    names = {'package_dir': str(Path(download.__file__).parent.parent.parent), 'url': server.url('slow'),
             'destination': str(destination)}
    code = ("import sys; sys.path.insert(0, {package_dir!r}); from vonenet_brainscore.published.download import "
            "download_file; download_file({url!r}, {destination!r}, progress=False)").format(**names)
    child = subprocess.Popen([sys.executable, '-c', code])
    try:
        deadline = time.monotonic() + 60
        while not list(destination.parent.glob('*.part')) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(destination.parent.glob('*.part')), 'the child never started downloading'
    finally:
        child.kill()
        child.wait(10)
    assert len(list(destination.parent.glob('*.part'))) == 1  # what kill -9 leaves behind

    server.routes['/w'] = sends(CHECKPOINT)
    download_file(server.url('w'), destination, progress=False)

    assert list(destination.parent.glob('*.part')) == []


# --- the environment ----------------------------------------------------------------------------
def test_home_variable_with_an_unknown_user_names_the_variable(monkeypatch):
    monkeypatch.setenv(download.HOME_ENV, '~nosuchuser/x')

    with pytest.raises(VOneNetError) as caught:
        download.cache_dir()
    message = str(caught.value)
    assert "VONENET_BRAINSCORE_HOME='~nosuchuser/x'" in message and 'absolute path' in message

    with pytest.raises(VOneNetError, match='VONENET_BRAINSCORE_HOME'):
        get_model('resnet50', progress=False)


def test_xdg_cache_home_with_an_unknown_user_names_the_variable(monkeypatch):
    monkeypatch.delenv(download.HOME_ENV, raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', '~nosuchuser')
    with pytest.raises(VOneNetError, match="XDG_CACHE_HOME='~nosuchuser'"):
        download.cache_dir()


def test_home_variable_naming_a_file(tmp_path, monkeypatch):
    (tmp_path / 'a-file').write_text('')
    monkeypatch.setenv(download.HOME_ENV, str(tmp_path / 'a-file'))
    with pytest.raises(VOneNetError, match='is a file, but it must name a folder'):
        download.cache_dir()


def test_mirror_that_is_not_a_url_names_the_variable(monkeypatch):
    monkeypatch.setenv(download.MIRROR_ENV, 'mirror.local/vonenet')
    with pytest.raises(VOneNetError, match=r"VONENET_BRAINSCORE_MIRROR='mirror.local/vonenet' is not an http"):
        get_model('resnet50', progress=False)


def test_weights_folder_says_a_file_is_expected(tmp_path):
    with pytest.raises(CheckpointError) as caught:
        get_model('resnet50', weights_path=tmp_path)
    message = str(caught.value)
    assert 'is a folder' in message and 'checkpoint file is expected' in message
    assert 'does not exist' not in message
