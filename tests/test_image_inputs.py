"""Image files in every Pillow mode reach the model as the right RGB pixels; bad files name themselves.

Each file is written by Pillow; the expected RGB comes from a reference written here with numpy
(and colorsys), never from the code under test. Where a file format is lossy (JPEG) the reference
starts from the pixels Pillow decodes, in the file's own mode.
"""
import colorsys
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from brainscore_vision.model_helpers.activations.pytorch import load_image as brainscore_load_image
from brainscore_vision.model_helpers.activations.pytorch import preprocess_images

from vonenet_brainscore.errors import StimulusError, VOneNetError
from vonenet_brainscore.preprocessing import MEAN, STD, brainscore_preprocessing, load_batch, load_image

PIXEL_LIMIT_VARIABLE = 'VONENET_BRAINSCORE_MAX_IMAGE_PIXELS'  # documented in images.py
H, W = 24, 32
RNG = np.random.default_rng(7)
BYTES = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
WORDS = RNG.integers(0, 65536, (H, W)).astype(np.uint16)
FLOATS = RNG.random((H, W)).astype(np.float32)
PALETTE = RNG.integers(0, 256, (256, 3), dtype=np.uint8)


def grey3(grey):
    return np.repeat(np.asarray(grey, dtype=np.uint8)[..., None], 3, axis=2)


def palette_image(mode='P'):
    image = Image.fromarray(BYTES[..., 0]).convert('P')  # indices = the grey values
    image.putpalette(PALETTE.tobytes())
    return image if mode == 'P' else image.convert('PA')


def cmyk_reference(cmyk):
    c, k = cmyk[..., :3].astype(float), cmyk[..., 3:].astype(float)
    return np.rint((255 - c) * (255 - k) / 255)  # never a tie: the product over 255 is not k + 1/2


def lab_reference(lab):
    """CIELAB (D50; L on 0..255, a and b as signed bytes, as TIFF stores them) -> sRGB, by the book."""
    lightness = lab[..., 0].astype(float) * 100 / 255
    a, b = (lab[..., i].astype(np.uint8).view(np.int8).astype(float) for i in (1, 2))
    fy = (lightness + 16) / 116
    f = np.stack([fy + a / 500, fy, fy - b / 200], -1)
    xyz = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * np.array([0.9642, 1.0, 0.8249])
    bradford = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
    d50, d65 = np.array([0.9642, 1.0, 0.8249]), np.array([0.95047, 1.0, 1.08883])
    adapt = np.linalg.inv(bradford) @ np.diag((bradford @ d65) / (bradford @ d50)) @ bradford
    to_srgb = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]])
    linear = np.clip(xyz @ adapt.T @ to_srgb.T, 0, 1)
    return np.rint(255 * np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055))


def ycbcr_reference(ycc):
    y, cb, cr = (ycc[..., i].astype(float) for i in range(3))
    rgb = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                    y + 1.772 * (cb - 128)], -1)
    return np.clip(np.rint(rgb), 0, 255)


def decoded(path):
    with Image.open(path) as image:
        return np.asarray(image)


# name -> (Pillow mode, writer(path), reference(path) -> expected RGB, tolerance in 8-bit levels)
CASES = {
    'RGB.png': ('RGB', lambda p: Image.fromarray(BYTES[..., :3]).save(p), lambda p: BYTES[..., :3], 0),
    'RGB.jpg': ('RGB', lambda p: Image.fromarray(BYTES[..., :3]).save(p, quality=90), decoded, 0),
    '1.png': ('1', lambda p: Image.fromarray(BYTES[..., 0] > 127).save(p),
              lambda p: grey3(np.where(BYTES[..., 0] > 127, 255, 0)), 0),
    'L.png': ('L', lambda p: Image.fromarray(BYTES[..., 0]).save(p), lambda p: grey3(BYTES[..., 0]), 0),
    'P.png': ('P', lambda p: palette_image().save(p), lambda p: PALETTE[BYTES[..., 0]], 0),
    # palette with one transparent entry, and with per-entry alpha (tRNS bytes): alpha is dropped
    'P-transparent.png': ('P', lambda p: palette_image().save(p, transparency=int(BYTES[0, 0, 0])),
                          lambda p: PALETTE[BYTES[..., 0]], 0),
    'P-alphas.png': ('P', lambda p: palette_image().save(p, transparency=bytes(range(256))),
                     lambda p: PALETTE[BYTES[..., 0]], 0),
    'PA.tif': ('PA', lambda p: palette_image('PA').save(p), lambda p: PALETTE[BYTES[..., 0]], 0),
    'LA.png': ('LA', lambda p: Image.frombytes('LA', (W, H), BYTES[..., :2].tobytes()).save(p),
               lambda p: grey3(BYTES[..., 0]), 0),
    'RGBA.png': ('RGBA', lambda p: Image.fromarray(BYTES).save(p), lambda p: BYTES[..., :3], 0),
    'CMYK.tif': ('CMYK', lambda p: Image.frombytes('CMYK', (W, H), BYTES.tobytes()).save(p),
                 lambda p: cmyk_reference(BYTES), 0),
    'CMYK.jpg': ('CMYK', lambda p: Image.frombytes('CMYK', (W, H), BYTES.tobytes()).save(p, quality=90),
                 lambda p: cmyk_reference(decoded(p)), 0),
    # Pillow's YCbCr -> RGB is JFIF's in fixed point: within one level of the real-valued formula
    'YCbCr.tif': ('YCbCr', lambda p: Image.frombytes('YCbCr', (W, H), BYTES[..., :3].tobytes()).save(p),
                  lambda p: ycbcr_reference(BYTES[..., :3]), 1),
    'LAB.tif': ('LAB', lambda p: Image.frombytes('LAB', (W, H), BYTES[..., :3].tobytes()).save(p),
                lambda p: lab_reference(BYTES[..., :3]), 1),
    'I;16.png': ('I;16', lambda p: Image.fromarray(WORDS).save(p), lambda p: grey3(WORDS // 256), 0),
    'I;16B.tif': ('I;16B', lambda p: Image.frombytes('I;16B', (W, H), WORDS.astype('>u2').tobytes()).save(p),
                  lambda p: grey3(WORDS // 256), 0),
    'I.tif': ('I', lambda p: Image.fromarray(WORDS.astype(np.int32)).save(p), lambda p: grey3(WORDS // 256), 0),
    'I.pgm': ('I', lambda p: Image.fromarray(WORDS).save(p), lambda p: grey3(WORDS // 256), 0),  # 16-bit PGM
    'F.tif': ('F', lambda p: Image.fromarray(FLOATS).save(p),
              lambda p: grey3(np.floor(FLOATS.astype(float) * 255 + 0.5)), 0),
}


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp('modes')
    paths = {}
    for name, (mode, write, _, _) in CASES.items():
        path = folder / name
        write(str(path))
        with Image.open(path) as image:
            assert image.mode == mode, f"{name} opened as {image.mode}, the test needs {mode}"
        paths[name] = path
    return paths


@pytest.mark.parametrize('name', list(CASES))
def test_every_mode_loads_as_the_reference_rgb(files, name):
    _, _, reference, tolerance = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no Pillow warning either (a palette with alphas would give one)
        image = load_image(files[name])
    assert image.mode == 'RGB' and image.size == (W, H)
    got, expected = np.asarray(image).astype(int), np.asarray(reference(str(files[name]))).astype(int)
    assert np.abs(got - expected).max() <= tolerance, f"{name}: off by up to {np.abs(got - expected).max()} levels"


@pytest.mark.parametrize('name', list(CASES))
def test_every_mode_reaches_the_model_as_the_reference_rgb(files, name):
    """What the model sees: Brain-Score's resize and normalisation of the reference RGB image."""
    _, _, reference, tolerance = CASES[name]
    batch = brainscore_preprocessing(224)([str(files[name])])
    assert batch.shape == (1, 3, 224, 224) and batch.dtype == np.float32
    expected_image = Image.fromarray(np.asarray(reference(str(files[name]))).astype(np.uint8), 'RGB')
    expected = preprocess_images([expected_image], image_size=224, normalize_mean=MEAN, normalize_std=STD)
    # normalised units: one 8-bit level is 1 / 127.5; resizing averages, so the bound carries over
    np.testing.assert_allclose(batch, expected, atol=tolerance / 127.5 + 1e-6, rtol=0)
    assert load_batch([files[name]]).shape == (1, 3, 224, 224)  # the classify path


@pytest.mark.parametrize('name', [n for n in CASES if CASES[n][0] in ('RGB', 'L', 'P', 'PA', 'LA', 'RGBA')])
def test_same_pixels_as_brainscore_wherever_its_loader_gives_rgb(files, name):
    ours = np.asarray(load_image(files[name]))
    stock = brainscore_load_image(str(files[name]))
    assert stock.mode == 'RGB'
    np.testing.assert_array_equal(ours, np.asarray(stock))


def test_hsv_image_converts_like_colorsys():
    """No Pillow file format stores HSV, so this one is an in-memory image."""
    from vonenet_brainscore.preprocessing import to_rgb
    hsv = BYTES[..., :3]
    image = Image.frombytes('HSV', (W, H), hsv.tobytes())
    expected = np.rint(np.array([[colorsys.hsv_to_rgb(*(pixel / 255)) for pixel in row] for row in hsv]) * 255)
    np.testing.assert_array_equal(np.asarray(to_rgb(image)), expected)


def test_an_8_bit_image_stored_at_16_bits_or_as_floats_comes_back_exactly(tmp_path):
    grey = BYTES[..., 0]
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / 'sixteen.png')
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / 'float.tif')
    for name in ('sixteen.png', 'float.tif'):
        np.testing.assert_array_equal(np.asarray(load_image(tmp_path / name)), grey3(grey), err_msg=name)


@pytest.mark.parametrize('values, message', [
    (np.full((4, 4), 200.0, np.float32), 'float pixels from 200 to 200.*0..1 scale'),
    (np.array([[0.0, np.nan]], np.float32), 'NaN or infinite'),
    (np.array([[0, 70000]], np.int32), 'integer pixels from 0 to 70000.*0..65535'),
    (np.array([[-5, 10]], np.int32), 'integer pixels from -5 to 10'),
])
def test_out_of_range_greyscale_is_an_error_not_clipped(tmp_path, values, message):
    path = tmp_path / 'out-of-range.tif'
    Image.fromarray(values).save(path)
    with pytest.raises(StimulusError, match=message) as error:
        brainscore_preprocessing(224)([str(path)])
    assert str(path) in str(error.value)


def _png_with_header_only(path, width, height):
    """A 70-byte PNG whose header claims width x height 1-bit pixels (what a decompression bomb looks like)."""
    def chunk(tag, data):
        return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data))
    header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0' * 64))
                     + chunk(b'IEND', b''))
    return path


@pytest.mark.parametrize('side', [10_000, 20_000])  # Pillow warns at 1-2x its limit (89.5 M pixels), raises above
def test_decompression_bomb_is_refused_naming_the_file_and_the_limit(tmp_path, monkeypatch, side):
    monkeypatch.delenv(PIXEL_LIMIT_VARIABLE, raising=False)
    path = _png_with_header_only(tmp_path / f'bomb{side}.png', side, side)
    with pytest.raises(StimulusError) as error:
        brainscore_preprocessing(224)([str(path)])
    message = str(error.value)
    assert str(path) in message and str(Image.MAX_IMAGE_PIXELS) in message
    assert 'PIL.Image.MAX_IMAGE_PIXELS' in message and PIXEL_LIMIT_VARIABLE in message


def test_a_trusted_large_image_opens_once_the_limit_is_raised(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # restored after the test
    path = tmp_path / 'large.png'
    Image.fromarray(BYTES[..., :3]).save(path)  # 768 pixels: fine
    assert load_image(path).size == (W, H)
    Image.fromarray(np.tile(BYTES[..., :3], (2, 2, 1))).save(path)  # 3072 pixels: over 2x the limit
    with pytest.raises(StimulusError, match='too large'):
        load_image(path)
    monkeypatch.setenv(PIXEL_LIMIT_VARIABLE, '4000')
    assert load_image(path).size == (2 * W, 2 * H)
    monkeypatch.setenv(PIXEL_LIMIT_VARIABLE, 'lots')
    with pytest.raises(VOneNetError, match=PIXEL_LIMIT_VARIABLE):
        load_image(path)


def _truncated(source, fraction=0.5):
    def write(path):
        data = source(path.with_name('whole' + path.suffix))
        path.write_bytes(data[:int(len(data) * fraction)])
    return write


def _whole(path, fmt):
    Image.fromarray(BYTES[..., :3]).save(path, fmt)
    return path.read_bytes()


@pytest.mark.parametrize('name, make, message', [
    ('missing.png', lambda p: None, 'does not exist'),
    ('folder.png', lambda p: p.mkdir(), 'is a folder'),
    ('empty.png', lambda p: p.write_bytes(b''), 'is an empty file'),
    ('notes.png', lambda p: p.write_text('not an image'), 'is not an image'),
    ('half.jpg', _truncated(lambda p: _whole(p, 'JPEG')), 'truncated or corrupt'),
    ('half.png', _truncated(lambda p: _whole(p, 'PNG')), 'truncated or corrupt'),
])
def test_every_image_error_names_the_file(tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    for load in (lambda: brainscore_preprocessing(224)([str(tmp_path / 'ok.png'), str(path)]),
                 lambda: load_batch([path])):
        Image.fromarray(BYTES[..., :3]).save(tmp_path / 'ok.png')
        with pytest.raises(StimulusError, match=message) as error:
            load()
        assert str(path) in str(error.value)


def test_an_empty_batch_is_a_clear_error():
    with pytest.raises(StimulusError, match='no images'):
        load_batch([])
