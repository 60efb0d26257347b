"""download_file against a real local HTTP server: complete, broken, refused and concurrent downloads."""
import importlib.util
import logging
import multiprocessing
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vonenet_brainscore.published import download
from vonenet_brainscore.published.download import download_file
from vonenet_brainscore.errors import VOneNetError, WeightsUnavailableError



def _checkpoint_bytes(n_values):
    """A real checkpoint (a download is checked to be one before it is cached) of incompressible bytes."""
    import io
    import torch
    buffer = io.BytesIO()
    generator = torch.Generator().manual_seed(0)
    torch.save({'flags': {'arch': 'resnet50'}, 'epoch': 0,
                'state_dict': {'weight': torch.rand(n_values, generator=generator)}}, buffer)
    return buffer.getvalue()


PAYLOAD = _checkpoint_bytes(512 * 1024 + 31)  # about 2 MB, not a multiple of the chunk size


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 whose handler behaviour each test chooses by path."""

    def __init__(self):
        self.requests = []  # paths of the GET requests received, in order
        self.full_bodies = 0  # responses whose whole body was written
        self.started = threading.Event()  # set when a slow body has begun
        self.release = threading.Event()  # a slow body finishes only once this is set
        self.stop = threading.Event()  # set at teardown, so no handler outlives the test
        self.on_partial = None  # called by /interrupt after half of the body was sent
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(('127.0.0.1', 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={'poll_interval': 0.05}, daemon=True)

    def url(self, path):
        host, port = self._httpd.server_address[:2]
        return f'http://{host}:{port}/{path.lstrip("/")}'

    def count(self, path):
        with self._lock:
            return self.requests.count('/' + path.lstrip('/'))

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                with server._lock:
                    server.requests.append(self.path)
                route = getattr(self, 'route_' + self.path.strip('/').split('/')[0], None)
                if route is None:
                    self.send_error(404, 'Not Found')
                    return
                route()

            def _headers(self, length=len(PAYLOAD)):
                self.send_response(200)
                self.send_header('Content-Type', 'application/octet-stream')
                self.send_header('Content-Length', str(length))
                self.end_headers()

            def _body_done(self):
                with server._lock:
                    server.full_bodies += 1

            def route_weights(self):
                self._headers()
                self.wfile.write(PAYLOAD)
                self._body_done()

            def route_truncated(self):
                self._headers()
                self.wfile.write(PAYLOAD[:len(PAYLOAD) // 2])
                self.wfile.flush()
                self.close_connection = True  # the server closes the socket mid-file

            def route_stall(self):
                self._headers()
                self.wfile.write(PAYLOAD[:1000])
                self.wfile.flush()
                server.stop.wait(30)  # never sends the rest

            def route_interrupt(self):
                self._headers()
                half = len(PAYLOAD) // 2
                self.wfile.write(PAYLOAD[:half])
                self.wfile.flush()
                server.on_partial()
                time.sleep(0.2)
                self.wfile.write(PAYLOAD[half:])
                self._body_done()

            def route_slow(self):
                self._headers()
                chunks = [PAYLOAD[i:i + 65536] for i in range(0, len(PAYLOAD), 65536)]
                middle = len(chunks) // 2
                for index, chunk in enumerate(chunks):
                    if index == 1:
                        server.started.set()
                    if index == middle:
                        server.release.wait(30)
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    time.sleep(0.005)
                self._body_done()

        return Handler

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)


@pytest.fixture
def server():
    with LocalServer() as running:
        yield running


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An isolated cache; the download tests pass explicit destinations inside it."""
    monkeypatch.setenv(download.HOME_ENV, str(tmp_path / 'cache'))
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    return tmp_path / 'cache'


# Run in a spawned process. It loads download.py (and errors.py) without the package __init__,
# which imports torch and would cost every fresh process seconds; the code under test is the same.
CHILD_DOWNLOAD = """
import sys, types
package = types.ModuleType('vonenet_brainscore')
package.__path__ = [package_dir]
sys.modules['vonenet_brainscore'] = package
from vonenet_brainscore.published.download import download_file
download_file(url, destination, progress=False)
"""


def part_files(folder):
    return sorted(p.name for p in Path(folder).glob('*.part'))


def unused_port():
    """A port on which nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_complete_download_then_served_from_cache(server, home):
    destination = download.weights_dir() / 'model.pth'

    result = download_file(server.url('weights/model.pth'), destination, progress=False)

    assert result == destination
    assert destination.read_bytes() == PAYLOAD
    assert server.count('weights/model.pth') == 1
    assert part_files(destination.parent) == []

    again = download_file(server.url('weights/model.pth'), destination, progress=False)

    assert again == destination
    assert server.count('weights/model.pth') == 1  # no second request
    assert destination.read_bytes() == PAYLOAD


def test_progress_bar_goes_to_stderr_not_stdout(server, home, capfd):
    destination = home / 'weights' / 'model.pth'

    download_file(server.url('weights/model.pth'), destination, progress=True)

    out, err = capfd.readouterr()
    assert destination.read_bytes() == PAYLOAD
    assert out == ''
    assert 'model.pth' in err  # tqdm labels the bar with the file name


def test_connection_dropped_mid_file_leaves_nothing(server, home):
    destination = home / 'weights' / 'model.pth'
    url = server.url('truncated/model.pth')

    with pytest.raises(WeightsUnavailableError) as caught:
        download_file(url, destination, progress=False)

    assert caught.value.__cause__ is not None
    assert url in str(caught.value)
    assert not destination.exists()
    assert part_files(destination.parent) == []
    assert server.count('truncated/model.pth') == 1


def test_read_timeout_leaves_nothing(server, home):
    destination = home / 'weights' / 'model.pth'

    with pytest.raises(WeightsUnavailableError) as caught:  # a hang here would be the failure (pytest's timeout)
        download_file(server.url('stall/model.pth'), destination, progress=False, timeout=0.5)

    assert 'TimeoutError: the server sent nothing for 0.5 s' in str(caught.value)
    assert not destination.exists()
    assert part_files(destination.parent) == []


def test_http_404_names_url_and_path(server, home):
    destination = home / 'weights' / 'missing.pth'
    url = server.url('no/such/file.pth')

    with pytest.raises(WeightsUnavailableError) as caught:
        download_file(url, destination, progress=False)

    message = str(caught.value)
    assert url in message
    assert str(destination) in message
    assert '404' in message
    assert isinstance(caught.value, VOneNetError)
    assert not destination.exists()
    assert part_files(destination.parent) == []


def test_connection_refused_explains_the_fixes(home):
    destination = home / 'weights' / 'model.pth'
    url = f'http://127.0.0.1:{unused_port()}/model.pth'

    with pytest.raises(WeightsUnavailableError) as caught:
        download_file(url, destination, progress=False, timeout=5)

    message = str(caught.value)
    assert url in message
    assert str(destination) in message
    assert 'VONENET_BRAINSCORE_MIRROR' in message
    assert 'weights_path=' in message
    assert caught.value.__cause__ is not None
    assert not destination.exists()
    assert part_files(destination.parent) == []


def test_keyboard_interrupt_is_reraised_after_cleanup(server, home):
    import _thread
    server.on_partial = _thread.interrupt_main  # Ctrl-C while the body is half-received
    destination = home / 'weights' / 'model.pth'

    with pytest.raises(KeyboardInterrupt):
        download_file(server.url('interrupt/model.pth'), destination, progress=False)

    assert not destination.exists()
    assert part_files(destination.parent) == []


def test_two_processes_download_once(server, home):
    destination = home / 'weights' / 'model.pth'
    url = server.url('slow/model.pth')
    waited = threading.Event()

    class ReleaseWhenWaiting(logging.Handler):
        """Lets the first download finish only once this process is blocked on the lock."""

        def emit(self, record):
            if 'Waiting for another process' in record.getMessage():
                waited.set()
                server.release.set()

    handler = ReleaseWhenWaiting(level=logging.INFO)
    logger = logging.getLogger(download.__name__)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    names = {'package_dir': str(Path(download.__file__).parent.parent), 'url': url,
             'destination': str(destination)}
    child = multiprocessing.get_context('spawn').Process(target=exec, args=(CHILD_DOWNLOAD, names))
    child.start()
    try:
        assert server.started.wait(30), 'the child never started downloading'
        safety_net = threading.Timer(10, server.release.set)  # should the log message not come
        safety_net.daemon = True
        safety_net.start()

        result = download_file(url, destination, progress=False)

        child.join(30)
        safety_net.cancel()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        if child.is_alive():
            child.kill()
            child.join()
    assert child.exitcode == 0
    assert waited.is_set(), 'the second download did not wait on the lock'
    assert result == destination
    assert destination.read_bytes() == PAYLOAD
    assert server.count('slow/model.pth') == 1
    assert server.full_bodies == 1
    assert part_files(destination.parent) == []


def test_existing_file_is_never_overwritten_or_fetched(server, home):
    destination = home / 'weights' / 'model.pth'
    destination.parent.mkdir(parents=True)
    destination.write_bytes(b'my own checkpoint')

    assert download_file(server.url('weights/model.pth'), destination) == destination
    unreachable = f'http://127.0.0.1:{unused_port()}/model.pth'
    assert download_file(unreachable, destination) == destination

    assert destination.read_bytes() == b'my own checkpoint'
    assert server.requests == []
    # the fast path takes no lock, so a read-only shared cache works
    assert sorted(p.name for p in destination.parent.iterdir()) == ['model.pth']


def test_base_url_and_weights_url_honour_the_mirror(monkeypatch):
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    assert download.base_url() == download.DEFAULT_BASE_URL
    assert download.weights_url('a.pth') == 'https://vonenet-models.s3.us-east-2.amazonaws.com/a.pth'

    monkeypatch.setenv(download.MIRROR_ENV, 'http://mirror.local/vonenet')
    assert download.base_url() == 'http://mirror.local/vonenet/'
    assert download.weights_url('a.pth') == 'http://mirror.local/vonenet/a.pth'

    monkeypatch.setenv(download.MIRROR_ENV, 'http://mirror.local/vonenet/')
    assert download.base_url() == 'http://mirror.local/vonenet/'
    assert download.weights_url('b.pth') == 'http://mirror.local/vonenet/b.pth'


def test_cache_dir_honours_home_then_xdg_then_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(download.HOME_ENV, str(tmp_path / 'explicit'))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert download.cache_dir() == tmp_path / 'explicit'
    assert download.weights_dir() == tmp_path / 'explicit' / 'weights'

    monkeypatch.delenv(download.HOME_ENV)
    assert download.cache_dir() == tmp_path / 'xdg' / 'vonenet-brainscore'

    monkeypatch.delenv('XDG_CACHE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'user'))
    assert download.cache_dir() == tmp_path / 'user' / '.cache' / 'vonenet-brainscore'
    assert download.weights_dir() == tmp_path / 'user' / '.cache' / 'vonenet-brainscore' / 'weights'
    assert not (tmp_path / 'user').exists()  # asking for the path creates nothing


def test_import_creates_no_directories(tmp_path, monkeypatch):
    monkeypatch.setenv(download.HOME_ENV, str(tmp_path / 'cache'))
    # execute the module afresh under another name, leaving the imported one untouched
    spec = importlib.util.spec_from_file_location('vonenet_brainscore.published._download_fresh_copy', download.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)

    assert fresh.weights_dir() == tmp_path / 'cache' / 'weights'
    assert list(tmp_path.iterdir()) == []
