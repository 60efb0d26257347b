"""The fast VOneBlock methods give the dense reference's outputs, for any colour assignment."""
import os

import pytest
import torch

from vonenet_brainscore import VOneBlock
from vonenet_brainscore.vone.accel import native

TOLERANCE = 1e-5  # of the output's maximum


def _images(n, size=96, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# The compiled kernels need a C compiler; where there is one (CI, this project's machines) a failure
# to build them fails these tests.
COMPILED = pytest.param('compiled', marks=pytest.mark.skipif(native.find_compiler() is None,
                                                              reason='no C compiler to build the kernels'))
DIFFERENTIABLE_METHODS = ['spectral', 'grouped']
FAST_METHODS = [COMPILED] + DIFFERENTIABLE_METHODS


def _both_paths(block, images, method='auto'):
    with torch.no_grad():
        block.method = method
        fast = block(images)
        block.method = 'dense'
        dense = block(images)
        block.method = 'auto'
    return fast, dense


def _assert_close(fast, dense):
    scale = dense.abs().max()
    assert scale > 0
    assert (fast - dense).abs().max() <= TOLERANCE * scale


@pytest.mark.parametrize('method', FAST_METHODS)
@pytest.mark.parametrize('noise_mode', [None, 'neuronal', 'gaussian'])
@pytest.mark.parametrize('batch', [1, 3, 5])
def test_fast_equals_dense(method, noise_mode, batch):
    block = VOneBlock(noise_mode=noise_mode, image_size=96, simple_channels=64, complex_channels=64).eval()
    block.fix_noise(batch_size=batch, seed=4)
    fast, dense = _both_paths(block, _images(batch), method)
    _assert_close(fast, dense)


@pytest.mark.parametrize('method', FAST_METHODS)
def test_published_size_block_is_exact_with_each_method(method):
    """The published settings: 512 channels, 25 px filters, 224 px images (odd batch)."""
    block = VOneBlock(noise_mode=None).eval()
    fast, dense = _both_paths(block, _images(3, size=224), method)
    _assert_close(fast, dense)


@pytest.mark.parametrize('method', [COMPILED, 'spectral'])
@pytest.mark.parametrize('odd_channels', [(7, 6), (5, 0), (0, 5)])
def test_fourier_methods_pair_odd_filter_counts(method, odd_channels):
    """Filters are paired as complex kernels per colour; an odd count leaves one unpaired."""
    simple, complex_ = odd_channels
    block = VOneBlock(noise_mode=None, image_size=64, simple_channels=simple, complex_channels=complex_)
    fast, dense = _both_paths(block, _images(2, size=64), method)
    _assert_close(fast, dense)


@pytest.mark.parametrize('size, padding', [(224, 12), (69, 0), (57, 3), (7, 12), (100, 0)])
def test_spectral_handles_any_input_size_and_padding(size, padding):
    from vonenet_brainscore.vone.accel.spectral import SpectralGabors
    block = VOneBlock(noise_mode=None, simple_channels=16, complex_channels=16)
    q0, q1 = block.simple_conv_q0.weight.detach(), block.simple_conv_q1.weight.detach()
    spectral = SpectralGabors(q0, q1, 16, 4, 12, images_per_pass=2, pairs_per_pass=5)
    images = torch.rand(3, 3, size, size + 5, generator=torch.Generator().manual_seed(size))
    got_q0, got_q1 = spectral(images, padding)
    want_q0 = torch.nn.functional.conv2d(images, q0, stride=4, padding=padding)
    want_q1 = torch.nn.functional.conv2d(images, q1, stride=4, padding=padding)[:, 16:]
    for got, want in ((got_q0, want_q0), (got_q1, want_q1)):
        assert got.shape == want.shape
        _assert_close(got, want)


@pytest.mark.skipif(native.find_compiler() is None, reason='no C compiler to build the kernels')
@pytest.mark.parametrize('size, padding', [(224, 12), (69, 0), (57, 3), (7, 12), (100, 0)])
def test_compiled_cells_handle_any_input_size_and_padding(size, padding):
    from vonenet_brainscore.vone.accel.compiled import CompiledCells
    block = VOneBlock(noise_mode=None, simple_channels=10, complex_channels=9)
    q0, q1 = block.simple_conv_q0.weight.detach(), block.simple_conv_q1.weight.detach()
    compiled = CompiledCells(q0, q1, 10, 4, 12, native.kernels(), images_per_call=2)
    images = torch.rand(3, 3, size, size + 5, generator=torch.Generator().manual_seed(size))
    got = compiled(images, (2.0, 0.5), padding)
    want_q0 = torch.nn.functional.conv2d(images, q0, stride=4, padding=padding)
    want_q1 = torch.nn.functional.conv2d(images, q1, stride=4, padding=padding)
    want = torch.cat([2.0 * want_q0[:, :10].clamp(min=0), 0.5 * torch.hypot(want_q0[:, 10:], want_q1[:, 10:])], 1)
    assert got.shape == want.shape
    _assert_close(got, want)


def test_auto_picks_the_fourier_route_for_full_images_and_matmul_for_crops():
    block = VOneBlock(noise_mode=None, simple_channels=8, complex_channels=8)
    fourier = 'compiled' if native.kernels() is not None else 'spectral'
    assert block.method_for(torch.zeros(1, 3, 224, 224)) == fourier
    assert block.method_for(torch.zeros(1, 3, 69, 69), padding=0) == 'grouped'
    block.method = 'dense'
    assert block.method_for(torch.zeros(1, 3, 224, 224)) == 'dense'
    block.method = 'fastest'
    with pytest.raises(ValueError, match='method must be one of'):
        block(torch.zeros(1, 3, 224, 224))


def test_fast_path_is_used_and_does_less_work():
    block = VOneBlock(noise_mode=None, simple_channels=32, complex_channels=32, image_size=64)
    grouped = block._filter_plans()['grouped']
    assert grouped is not None
    assert sum(w.shape[0] for _, w in grouped.groups) == 32 + 2 * 32  # q0 for all, q1 for complex only
    assert all(w.shape[1] == 1 for _, w in grouped.groups)            # one colour channel per filter


@pytest.mark.parametrize('method', FAST_METHODS)
def test_checkpoint_with_arbitrary_colour_assignment(tmp_path, method):
    """Weights from elsewhere (e.g. a published checkpoint) with another colour draw stay exact."""
    source = VOneBlock(noise_mode=None, colour_seed=123, image_size=96, simple_channels=64, complex_channels=64)
    path = tmp_path / 'block.pt'
    torch.save(source.state_dict(), path)
    block = VOneBlock(noise_mode=None, colour_seed=0, image_size=96, simple_channels=64, complex_channels=64)
    before = block._filter_plans()['grouped'].inverse.clone()
    block.load_state_dict(torch.load(path, weights_only=True))
    assert not torch.equal(block._filter_plans()['grouped'].inverse, before), 'regrouping must follow the new weights'
    fast, dense = _both_paths(block, _images(2), method)
    _assert_close(fast, dense)
    with torch.no_grad():
        _assert_close(fast, source(_images(2)))


@pytest.mark.parametrize('method', FAST_METHODS)
def test_random_per_filter_assignment(method):
    block = VOneBlock(noise_mode=None, image_size=64, simple_channels=16, complex_channels=16)
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for bank in (block.simple_conv_q0, block.simple_conv_q1):
            kernels = bank.weight.abs().sum(1, keepdim=True) * torch.sign(torch.randn(bank.weight.shape[0], 1, 1, 1,
                                                                                      generator=generator))
            bank.weight.zero_()
            channels = torch.randint(0, 3, (bank.weight.shape[0],), generator=generator)
            bank.weight[torch.arange(bank.weight.shape[0]), channels] = kernels[:, 0]
    fast, dense = _both_paths(block, _images(3, size=64), method)
    _assert_close(fast, dense)


def test_multichannel_filters_fall_back_to_the_dense_path():
    block = VOneBlock(noise_mode=None, image_size=64, simple_channels=8, complex_channels=8)
    with torch.no_grad():
        block.simple_conv_q0.weight[0, :] = block.simple_conv_q0.weight[0].sum(0, keepdim=True)
    assert block._filter_plans() is None
    fast, dense = _both_paths(block, _images(2, size=64))
    assert torch.equal(fast, dense)


def test_hooks_on_the_filter_banks_see_their_outputs():
    block = VOneBlock(noise_mode=None, image_size=64, simple_channels=8, complex_channels=8)
    seen = []
    handle = block.simple_conv_q1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        block(_images(1, size=64))
    handle.remove()
    assert seen == [(1, 16, 16, 16)]


@pytest.mark.parametrize('method', FAST_METHODS + ['dense'])
def test_unpadded_crop_equals_the_full_map(method):
    block = VOneBlock(noise_mode=None, image_size=96, simple_channels=16, complex_channels=16)
    block.method = method
    images = _images(2)
    with torch.no_grad():
        full = block.gabors_f(images)
        crop = block.gabors_f(images[:, :, 4 * 8 - 12:4 * 15 + 13, 4 * 6 - 12:4 * 11 + 13], padding=0)
    torch.testing.assert_close(crop, full[:, :, 8:16, 6:12], rtol=1e-5, atol=1e-5 * full.abs().max().item())


def test_gradients_equal_the_dense_paths():
    """Attacks differentiate through the block: each method must give the reference gradient."""
    block = VOneBlock(noise_mode=None, image_size=64, simple_channels=8, complex_channels=8)
    gradients = {}
    for method in DIFFERENTIABLE_METHODS + ['dense']:
        block.method = method
        images = _images(2, size=64).requires_grad_()
        (block(images) * torch.linspace(0, 1, 16).view(1, 16, 1, 1)).sum().backward()
        gradients[method] = images.grad
    assert gradients['dense'].abs().sum() > 0
    for method in DIFFERENTIABLE_METHODS:
        _assert_close(gradients[method], gradients['dense'])


@pytest.mark.parametrize('method', FAST_METHODS)
def test_an_image_gets_the_same_bits_in_any_batch(method):
    """Brain-Score batches images as it likes; each image's response must not depend on its batch."""
    block = VOneBlock(noise_mode=None, image_size=96, simple_channels=32, complex_channels=32).eval()
    block.method = method
    images = _images(11)
    with torch.no_grad():
        together = block(images)
        for index in (0, 5, 10):
            assert torch.equal(block(images[index:index + 1])[0], together[index])
        assert torch.equal(block(images[3:6]), together[3:6])


def _compiled_block(**settings):
    if native.kernels() is None:
        pytest.skip(f'compiled kernels unavailable: {native.unavailable_reason()}')
    return VOneBlock(noise_mode=None, image_size=96, simple_channels=16, complex_channels=16, **settings)


def test_auto_leaves_the_compiled_kernels_when_they_cannot_serve():
    """They are not differentiable, skip the 'simple'/'complex' hook points and take float32."""
    block = _compiled_block()
    images = _images(1)
    assert block.method_for(images) == 'compiled'
    assert block.method_for(images.double()) == 'spectral'
    assert block.method_for(images.requires_grad_()) == 'spectral'
    seen = []
    handle = block.complex.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert block.method_for(_images(1)) == 'spectral'
    with torch.no_grad():
        block(_images(1))
    handle.remove()
    assert seen == [(1, 16, 24, 24)]
    assert block.method_for(_images(1)) == 'compiled'


def test_asking_for_compiled_where_it_cannot_serve_says_what_to_do():
    block = _compiled_block()
    block.method = 'compiled'
    with pytest.raises(RuntimeError, match="not differentiable.*method = 'auto'"):
        block(_images(1).requires_grad_())


def test_compiled_follows_the_gain_and_new_weights():
    block = _compiled_block()
    images = _images(2)

    def cells(method):
        block.method = method
        with torch.no_grad():
            return block.gabors_f(images)  # before the final rectification, so a negative gain shows

    for k_exc in (25.0, -3.0):
        block.config = block.config.replace(k_exc=k_exc)
        _assert_close(cells('compiled'), cells('dense'))
    assert cells('compiled').max() <= 0
    with torch.no_grad():
        block.simple_conv_q0.weight.mul_(-1.5)
    _assert_close(cells('compiled'), cells('dense'))


def test_a_traced_block_computes_what_the_block_does():
    """Tracing records torch operators only: 'auto' takes the original's dense path under it."""
    block = VOneBlock(noise_mode=None, image_size=64, simple_channels=8, complex_channels=8).eval()
    traced = torch.jit.trace(block, _images(1, size=64), check_trace=False)
    images = _images(2, size=64, seed=3)
    with torch.no_grad():
        _assert_close(traced(images), block(images))
    # the dense path: the original's two convolutions (phase 0 and phase 90 filter banks), and none of
    # the other methods' operators (Fourier transforms, grouped matrix products, compiled calls)
    kinds = [node.kind() for node in traced.inlined_graph.nodes()]
    assert kinds.count('aten::_convolution') == 2, kinds
    assert not [kind for kind in kinds if 'fft' in kind or kind in ('aten::matmul', 'aten::bmm', 'aten::mm')
                or not kind.startswith(('aten::', 'prim::'))], kinds


@pytest.mark.parametrize('method', FAST_METHODS)
def test_channels_last_and_strided_inputs(method):
    block = VOneBlock(noise_mode=None, image_size=96, simple_channels=16, complex_channels=16).eval()
    images = _images(2)
    _, dense = _both_paths(block, images, 'dense')
    spaced = torch.zeros(2, 3, 192, 192)
    spaced[:, :, ::2, ::2] = images
    for layout in (images.to(memory_format=torch.channels_last), spaced[:, :, ::2, ::2]):
        assert not layout.is_contiguous()
        fast, _ = _both_paths(block, layout, method)
        _assert_close(fast, dense)


# --- the compiled kernels on every instruction set and thread count -----------------------------
def _build_kernels(tmp_path, flags):
    """The kernels built with ``flags`` into tmp_path, loaded (not cached); None if the compiler refuses."""
    import ctypes
    import subprocess
    compiler = native.compiler_command()
    library = tmp_path / f"kernels{abs(hash(tuple(flags)))}.so"
    result = subprocess.run([*compiler, *flags, '-shared', '-fPIC', str(native.SOURCE), '-o', str(library), '-lm'],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return native.Kernels(ctypes.CDLL(str(library)), library, flags)


def _x86():
    import platform
    return platform.machine().lower() in ('x86_64', 'amd64', 'i686', 'i386')


BUILDS = {
    'native': ['-O3', '-march=native', '-fopenmp', '-fno-math-errno'],
    # what an AVX2 machine without AVX-512 builds, also on a CPU that has AVX-512
    'avx2': ['-O3', '-march=haswell', '-fopenmp', '-fno-math-errno'],
    'baseline': ['-O3', '-fopenmp', '-fno-math-errno'],  # SSE2 on x86-64, NEON on arm64
    'no OpenMP, -O2': ['-O2'],
}


@pytest.mark.skipif(native.find_compiler() is None, reason='no C compiler to build the kernels')
@pytest.mark.parametrize('build', list(BUILDS))
def test_every_build_of_the_kernels_is_exact(tmp_path, build):
    """Each instruction set has its own vector width and register blocking: each must give the
    original's cells (published size, batches that fill and do not fill a register block)."""
    from vonenet_brainscore.vone.accel.compiled import CompiledCells
    if build == 'avx2' and not _x86():
        pytest.skip('AVX2 is x86')
    kernels = _build_kernels(tmp_path, BUILDS[build])
    if kernels is None:
        pytest.skip(f'the compiler does not build {BUILDS[build]}')
    if build == 'avx2':
        import re
        flags = open('/proc/cpuinfo').read() if os.path.exists('/proc/cpuinfo') else ''
        if not re.search(r'\bavx2\b', flags) or not re.search(r'\bfma\b', flags):
            pytest.skip('this CPU has no AVX2 and FMA to run them')
        assert kernels.isa == 'avx2+fma' and kernels.lanes == 8
    assert native._self_check(kernels) is None
    block = VOneBlock(noise_mode=None).eval()
    q0, q1 = block.simple_conv_q0.weight.detach(), block.simple_conv_q1.weight.detach()
    cells = CompiledCells(q0, q1, block.simple_channels, 4, 12, kernels)
    images = _images(kernels.images_per_block + 1, size=224)
    with torch.no_grad():
        block.method = 'dense'
        want = block.gabors_f(images)
    for threads in (1, 2):
        got = cells(images, (block.k_exc, block.k_exc / 2 ** 0.5), threads=threads)
        _assert_close(got, want)


@pytest.mark.skipif(native.find_compiler() is None, reason='no C compiler to build the kernels')
def test_compiled_results_do_not_depend_on_the_thread_count():
    """The thread count follows the machine's load: it must never change a bit of the result."""
    block = _compiled_block()
    cells = block._compiled_plan()
    images = _images(13)
    gains = (block.k_exc, block.k_exc / 2 ** 0.5)
    one = cells(images, gains, threads=1)
    for threads in (2, 3, 8):
        assert torch.equal(cells(images, gains, threads=threads), one)


def test_the_thread_policy_leaves_cpus_that_others_keep_busy(monkeypatch):
    from vonenet_brainscore.vone.accel import compiled
    policy = compiled.ThreadPolicy(window_s=0.0)
    if policy._busy_ticks() is None:
        assert policy.threads(4) == 4, 'without /proc/stat it uses what torch uses'
        return
    policy._cpus = {0, 1, 2, 3}
    clock = {'wall': 100.0, 'busy': 0, 'mine': 0.0}
    policy._clock, policy._cpu_clock = (lambda: clock['wall']), (lambda: clock['mine'])
    monkeypatch.setattr(policy, '_busy_ticks', lambda: clock['busy'])
    assert policy.threads(4) == 4          # no window yet: torch's count
    assert policy.threads(1) == 1
    # one second: this process used 2 CPUs, others 1.5 CPUs of the 4
    clock['wall'] += 1.0
    clock['mine'] += 2.0
    clock['busy'] += int(3.5 * policy._ticks_per_s)
    assert policy.threads(4) == 2          # 2.5 CPUs free, not quite 3
    assert policy.threads(1) == 1
    clock['wall'] += 1.0
    clock['mine'] += 2.0
    clock['busy'] += int(2.0 * policy._ticks_per_s)  # the others stopped
    assert policy.threads(4) == 4
    assert policy.threads(8) == 4          # never more than the CPUs it may use
    clock['wall'] += 1.0
    clock['busy'] += int(4.0 * policy._ticks_per_s)  # others took everything
    assert policy.threads(4) == 1          # never fewer than one
    monkeypatch.setattr(policy, '_busy_ticks', lambda: 1 / 0)
    assert policy.threads(3) == 3          # and it never breaks a forward pass
