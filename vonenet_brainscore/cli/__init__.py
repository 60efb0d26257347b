"""``vonenet-brainscore``: one verb per job. Thin: parse, call the library, print (and plot)."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, Sequence

# Brain-Score otherwise pip-installs plugin requirements into whatever Python is on PATH, and probes
# cloud metadata for ~90 s before any S3 failure: the CLI process never does either (see brainscore_env).
from .. import errors  # noqa: E402
from ..brainscore_env import set_process_defaults  # noqa: E402

set_process_defaults()

VERBS: Dict[str, Callable] = {}


def verb(name: str, help: str):
    """Register ``function(args)`` as sub-command ``name``; ``function.arguments(parser)`` adds options."""
    def decorate(function):
        function.verb_help = help
        VERBS[name] = function
        return function
    return decorate


class UsageError(errors.VOneNetError):
    """A command-line argument that cannot work, found before any work starts; the message names the flag."""


# --- argument checks ------------------------------------------------------------------------------
def _number(kind, low=None, high=None, *, low_open: bool = False, what: str):
    """An argparse ``type``: a ``kind`` (int or float) within [low, high] (``low_open``: above low)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) \
                or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    parse.__name__ = what  # argparse names the type by it
    return parse


POSITIVE_INT = _number(int, 1, what='a positive integer (1 or more)')
COUNT = _number(int, 0, what='an integer >= 0')
SEED = _number(int, 0, 2 ** 32 - 1, what='an integer seed in 0 .. 4294967295')
POSITIVE_FLOAT = _number(float, 0, low_open=True, what='a number > 0')
NON_NEGATIVE_FLOAT = _number(float, 0, what='a number >= 0')
SEVERITY = _number(int, 1, 5, what='a corruption severity in 1 .. 5')


def _image_size_type():
    from ..constants import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
    return _number(int, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE,
                   what=f'an image size in pixels, {MIN_IMAGE_SIZE} .. {MAX_IMAGE_SIZE}')


def _writable_location(flag: str, path: Path, folder: Path) -> None:
    """``path`` (given to ``flag``) can be written in or under ``folder``: its nearest existing ancestor
    is a folder in which a file can be made (tried for real: permissions, read-only file systems, root)."""
    from ..paths import writable_problem
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {path} cannot be created: {existing} is a file, not a folder; choose another "
                         f"location")
    problem = writable_problem(existing)
    if problem:
        raise UsageError(f"{flag} {path} cannot be written: making a file in {existing} fails ({problem}); choose "
                         f"a writable location")


def _output_file(flag: str, path, suffix: str, about: str = '') -> Path:
    """Check now, not after the run, that the file ``path`` given to ``flag`` can be written."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}{about} is an existing folder; {flag} takes a file name ending in {suffix}, "
                         f"e.g. {path / ('results' + suffix)}")
    if path.suffix.lower() != suffix:
        raise UsageError(f"{flag} {path}{about} does not end in {suffix}; the file is written as "
                         f"{suffix[1:].upper()}, name it so, e.g. {path.with_suffix(suffix)}")
    _writable_location(flag, path, path.parent)
    if path.exists():
        try:
            open(path, 'ab').close()  # appends nothing: only asks whether it could be rewritten
        except OSError as error:
            raise UsageError(f"{flag} {path}{about} exists and cannot be rewritten ({error.strerror}); choose "
                             f"another name or fix its permissions") from None
    return path


def _output_dir(flag: str, path, files: Sequence[str] = (), about: str = '') -> Path:
    """Check now that ``path`` can be the folder (created if missing) that ``files`` are written into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}{about} is an existing file; {flag} takes a folder (created if missing), "
                         f"e.g. {path.with_suffix('') if path.suffix else path.parent / (path.name + '_out')}")
    for name in files:
        if (path / name).is_dir():
            raise UsageError(f"{flag} {path}{about}: {path / name} is a folder where the file {name} is to be "
                             f"written; move it away or choose another {flag}")
    _writable_location(flag, path, path)
    return path


def _input_file(flag: str, path, folder_ok: bool = False) -> Path:
    """An existing file (or folder, with ``folder_ok``) given to ``flag``."""
    path = Path(path)
    if not path.exists():
        broken = ' (a symbolic link to a missing file)' if path.is_symlink() else ''
        raise UsageError(f"{flag} {path} does not exist{broken}; check the path")
    if path.is_dir() and not folder_ok:
        inside = sorted(p.name for p in path.iterdir() if p.name.endswith(('.pth', '.pth.tar', '.pt', '.tar')))
        raise UsageError(f"{flag} {path} is a folder; {flag} takes a checkpoint file"
                         + (f", e.g. one of these in it: {', '.join(inside[:5])}" if inside else
                            " (no .pth, .pth.tar or .pt file in it)"))
    return path


@contextlib.contextmanager
def _progress_bars_off() -> Iterator[None]:
    """--quiet: no progress bar from anyone, Brain-Score's (activations, cross-validation, ...) included.

    Every tqdm bar is created disabled while the command runs (tqdm reads TQDM_DISABLE only when it
    is first imported, which happened before the arguments were parsed); the environment variable is
    also set for processes started meanwhile. Both are undone afterwards.
    """
    import tqdm.std
    saved_init, saved_env = vars(tqdm.std.tqdm)['__init__'], os.environ.get('TQDM_DISABLE')
    configured_init = tqdm.std.tqdm.__init__

    def disabled_init(self, *args, **kwargs):
        kwargs['disable'] = True
        configured_init(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = disabled_init
    os.environ['TQDM_DISABLE'] = '1'
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = saved_init
        if saved_env is None:
            os.environ.pop('TQDM_DISABLE', None)
        else:
            os.environ['TQDM_DISABLE'] = saved_env


# --- models ---------------------------------------------------------------------------------------
@verb('models', 'list the published VOneNets and whether their weights are cached')
def models_command(args):
    from ..published.naming import brain_identifier
    from ..published.catalogue import CATALOGUE
    states = {'missing': 'not cached', 'verified': 'cached (verified download)',
              'unrecorded': 'cached (placed by hand)', 'changed': 'CHANGED since download: will be fetched again'}
    rows = [(r.name, brain_identifier(r.name), r.arch, states[r.cache_state], r.description)
            for r in CATALOGUE.values()]
    _print_table(('model', 'brain model', 'back-end', 'weights', 'description'), rows)


models_command.arguments = lambda parser: None


# --- info -----------------------------------------------------------------------------------------
@verb('info', 'build a model and print its summary (layers, VOneBlock settings, output shapes)')
def info_command(args):
    import torch
    model, weights = _load_model(args)
    config = model.vone_block.config
    with torch.no_grad():
        v1 = model.vone_block.output_shape()
        logits = model(torch.zeros(1, 3, config.image_size, config.image_size)).shape[1:]
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model        {args.model} ({model.arch} back-end)")
    print(f"weights      {weights}")
    print(f"parameters   {params:,} ({trainable:,} trainable; the VOneBlock is fixed)")
    print(f"input        3 x {config.image_size} x {config.image_size} px = {config.visual_degrees} deg, "
          f"mean = std = 0.5")
    print(f"V1 output    {' x '.join(map(str, v1))} (vone_block)")
    print(f"logits       {tuple(logits)}")
    print("VOneBlock    " + ', '.join(f"{k}={v}" for k, v in config.as_dict().items()))
    print("stages       " + ', '.join(name for name, _ in model.named_children())
          + ' | back-end: ' + ', '.join(name for name, _ in model.model.named_children()))


def _model_arguments(parser):
    parser.add_argument('model', help='published model name (see `vonenet-brainscore models`)')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--weights', metavar='PATH', help='checkpoint file in the published training format')
    source.add_argument('--untrained', action='store_true',
                        help='seeded VOneBlock and randomly initialised back-end (no weights needed)')
    parser.add_argument('--no-noise', action='store_true', help='switch the VOneBlock noise off')


info_command.arguments = _model_arguments


def _load_model(args):
    """The requested model, and a line saying where its weights came from."""
    from ..published.catalogue import get_model, model_record
    overrides = {'noise_mode': None} if args.no_noise else {}
    record = model_record(args.model)
    if getattr(args, 'weights', None):
        _input_file('--weights', args.weights)
    if getattr(args, 'untrained', False):
        return get_model(args.model, pretrained=False, **overrides), 'none (untrained back-end, seeded)'
    if args.weights:
        return get_model(args.model, weights_path=args.weights, **overrides), args.weights
    try:
        return get_model(args.model, **overrides), str(record.cache_path)
    except errors.WeightsUnavailableError as error:
        raise errors.WeightsUnavailableError(f"{error}\n  - or pass --untrained to use the seeded VOneBlock with "
                                             f"an untrained back-end on purpose") from error


# --- classify -------------------------------------------------------------------------------------
@verb('classify', 'classify images with a VOneNet and print the top ImageNet labels')
def classify_command(args):
    import torch
    from ..preprocessing import imagenet_categories, load_batch
    from ..training.imagenet import num_outputs
    model, weights = _load_model(args)
    outputs = num_outputs(model)
    if args.top is not None and args.top > outputs:
        raise UsageError(f"--top {args.top} asks for more labels than the model's {outputs} outputs; use --top 1 "
                         f"to {outputs}")
    top_k = args.top if args.top is not None else min(5, outputs)
    if args.untrained:
        print('warning: untrained back-end, labels are meaningless', file=sys.stderr)
    images = load_batch(args.images, model.image_size)
    with torch.no_grad():
        probabilities = model(images).softmax(dim=1)
    categories = imagenet_categories()
    if outputs != len(categories):
        print(f'note: the model has {outputs} outputs, not the {len(categories)} ImageNet classes; labels are '
              f'output indices (output i is the i-th class folder, in sorted order, it was trained on)',
              file=sys.stderr)
        categories = [f'output {i}' for i in range(outputs)]
    results = []
    for path, p in zip(args.images, probabilities):
        top = p.topk(top_k)
        labels = [{'label': categories[i], 'index': int(i), 'probability': float(v)}
                  for v, i in zip(top.values, top.indices)]
        results.append({'image': str(path), 'top': labels})
        print(path)
        for entry in labels:
            print(f"  {entry['probability']:6.3f}  {entry['label']}")
    if args.json:
        print(json.dumps({'model': args.model, 'weights': weights, 'results': results}, indent=2))


def _classify_arguments(parser):
    _model_arguments(parser)
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument('--top', type=POSITIVE_INT,
                        help="labels to show per image, 1 to the model's outputs (default 5, or all if fewer)")
    parser.add_argument('--json', action='store_true', help='also print the results as JSON')


classify_command.arguments = _classify_arguments


# --- score ----------------------------------------------------------------------------------------
@verb('score', 'score brain models (ours or any Brain-Score model) on the V1 property benchmarks (offline) '
              'and write table, JSON, CSV, figures')
def score_command(args):
    from ..scoring.v1_properties.figures import plot_properties
    from ..scoring.v1_properties.score import resolve_benchmarks
    output, csv_path, figures = _score_outputs(args)
    if args.weights:
        _input_file('--weights', args.weights)
    try:
        resolve_benchmarks(args.benchmarks)
    except errors.VOneNetError as error:
        raise UsageError(f'--benchmarks: {error}') from None
    runs = [(_score_name(args.model), args.layer, '--layer')]
    runs += [_against_entry(entry) for entry in args.against or []]
    names = [f'{name}@{layer}' if layer else name for name, layer, _ in runs]
    if len(set(names)) != len(names):
        raise UsageError(f"--against: each model (and layer) once; got {', '.join(names)}")
    per_model, records = [], []
    for index, (identifier, layer, flag) in enumerate(runs):
        main = index == 0
        results = _score_one(args, identifier, layer, flag, weights=args.weights if main else None,
                             untrained=args.untrained if main else False)
        label = results[0].model.split('@')[0] + (f' ({layer})' if layer else '')
        per_model.append((label, results))
        records += [{**r.as_dict(), 'layer': layer or 'committed V1'} for r in results]
    if len(per_model) == 1:
        results = per_model[0][1]
        rows = [(r.benchmark, f'{r.score:.3f}', f'{r.raw:.3f}', f'{r.ceiling:.3f}', len(r.model_values))
                for r in results]
        _print_table(('benchmark', 'score', 'raw', 'ceiling', 'model neurons'), rows)
    else:  # one joint table: a score column per model (its neurons in brackets)
        header = ('benchmark',) + tuple(label for label, _ in per_model)
        rows = [(r.benchmark,) + tuple(f'{results[i].score:.3f} ({len(results[i].model_values)})'
                                      for _, results in per_model)
                for i, r in enumerate(per_model[0][1])]
        _print_table(header, rows)
        print('(score, model neurons in brackets; each run\'s raw score and ceiling are in the JSON/CSV)')
    for (label, results) in per_model:
        print(f'model {label}: {results[0].settings}')
    if any('weights=untrained' in r['settings'] for r in records) and not args.untrained:
        print('note: the published weights could not be had, so the back-end is untrained (identifier tagged '
              '_untrained). V1 is the fixed, seeded VOneBlock, so these V1 scores do not depend on it.',
              file=sys.stderr)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(records, indent=2) + '\n')
        print(f'wrote {output}')
    if csv_path is not None:
        _write_csv(csv_path, records)
        print(f'wrote {csv_path}')
    if figures is not None:
        for i, result in enumerate(per_model[0][1]):
            plot_properties([(label, results[i]) for label, results in per_model],
                            figures / f'{result.benchmark}.png')
        print(f'wrote {len(per_model[0][1])} figures to {figures}/')


def _score_name(name: str) -> str:
    """Ours by catalogue name or identifier (resolved), else any Brain-Score identifier as given."""
    from ..published.naming import LEGACY_NAMES
    try:
        return _brain_identifier(name)
    except errors.UnknownModelError:
        if name in LEGACY_NAMES:  # an old name of ours: the error names its replacement
            raise
        return name


def _against_entry(entry: str):
    """``MODEL`` or ``MODEL@LAYER`` (Brain-Score identifiers never contain '@')."""
    name, _, layer = entry.partition('@')
    if not name or (_ and not layer):
        raise UsageError(f"--against {entry!r}: give MODEL or MODEL@LAYER, e.g. alexnet_random@features.2")
    return _score_name(name), layer or None, '--against'


def _score_one(args, identifier, layer, flag, weights, untrained):
    from ..brain.commitments import UnknownLayerError
    from ..published.naming import spec
    from ..scoring.v1_properties.score import score_v1_properties
    try:
        return score_v1_properties(identifier, args.benchmarks, layer=layer, weights_path=weights,
                                   pretrained=not untrained, noise_seed=args.noise_seed, seed=args.seed,
                                   batch_size=args.batch_size, progress=not args.quiet,
                                   announce=lambda line: print(f'memory: {line}', file=sys.stderr, flush=True))
    except UnknownLayerError as error:
        if not layer or layer not in error.layers:
            raise
        try:
            hint = f"(`vonenet-brainscore info {spec(identifier).model} --untrained` lists its stages)"
        except errors.VOneNetError:
            hint = "(the names of its torch modules, e.g. features.2)"
        raise UsageError(f"{flag} {layer!r} is not a layer of {identifier}; valid layers: the candidate "
                         f"layers {', '.join(error.candidates)}, or any other module name of the network "
                         f"{hint}") from None


def _score_outputs(args):
    """(JSON, CSV, figures folder) of the score verb, each checked before the run; None where not written."""
    output = _output_file('--output', args.output, '.json') if args.output else None
    if args.csv:
        csv_path = _output_file('--csv', args.csv, '.csv')
    else:
        csv_path = output.with_suffix('.csv') if output is not None else None
        if csv_path is not None:
            _output_file('--output', csv_path, '.csv', about=' (the CSV written beside the JSON)')
    if args.figures:
        figures = _output_dir('--figures', args.figures)
    else:
        figures = output.with_suffix('') if output is not None else None
        if figures is not None:
            _output_dir('--output', figures, about=' (the figures folder written beside the JSON)')
    if figures is not None and figures.resolve() in {p.resolve() for p in (output, csv_path) if p is not None}:
        raise UsageError(f"--figures {figures} is the path of another output; give the figures their own folder")
    if output is not None and csv_path is not None and output.resolve() == csv_path.resolve():
        raise UsageError(f"--csv {csv_path} is the --output file; give them different names")
    return output, csv_path, figures


def _score_arguments(parser):
    parser.add_argument('model', help='brain model identifier: ours (e.g. vonenet_resnet50_nonoise) or any model '
                                      'Brain-Score can load (brainscore_vision.load_model, e.g. alexnet_random)')
    parser.add_argument('--against', nargs='+', metavar='MODEL[@LAYER]',
                        help='score these models too, side by side (one table, one figure per property); '
                             '@LAYER commits their V1 to LAYER')
    parser.add_argument('--benchmarks', nargs='+', default=['v1-properties'],
                        help="'v1-properties' (the seven offline Marques2020 benchmarks) or benchmark ids")
    parser.add_argument('--layer', help='score this layer as V1 instead of the committed one (a module name, '
                                         'e.g. model.layer1.0); for a Brain-Score model with no region map of '
                                         'its own, it commits V1 (no layer selection, which needs S3)')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--weights', metavar='PATH', help='checkpoint file in the published training format')
    source.add_argument('--untrained', action='store_true', help='untrained back-end on purpose (VOneNets only)')
    parser.add_argument('--noise-seed', type=SEED, default=0, help='seed of the VOneBlock noise draws (default 0)')
    parser.add_argument('--seed', type=SEED, default=0, help="seed of Brain-Score's bootstrap (default 0)")
    parser.add_argument('--batch-size', type=POSITIVE_INT, default=32, help='images per forward pass (default 32)')
    parser.add_argument('--output', metavar='JSON', help='write results to this .json file (and a CSV beside it, '
                                                         'and the figures in a folder of the same name)')
    parser.add_argument('--csv', metavar='CSV', help='CSV path (default: the JSON path with .csv)')
    parser.add_argument('--figures', metavar='DIR', help='folder for the figures (default: beside the JSON)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


score_command.arguments = _score_arguments


def _brain_identifier(name: str) -> str:
    """Accept a brain-model identifier, or a catalogue name such as 'resnet50'."""
    from ..published.naming import resolve
    return resolve(name)


def _write_json(path, record):
    if path:
        from pathlib import Path
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + '\n')
        print(f'wrote {path}')


def _write_csv(path, records):
    import csv
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='') as file:
        writer = csv.DictWriter(file, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


# --- map-layers -----------------------------------------------------------------------------------
@verb('map-layers', 'score every candidate layer on every region (your recordings, Brain-Score ids, V1 properties)')
def map_layers_command(args):
    import warnings
    output = _output_dir('--output', args.output, files=('layer_mapping.csv', 'layer_mapping.json',
                                                         'layer_mapping.png'))
    identifier = _brain_identifier(args.model)
    if args.data and not args.stimuli:
        raise UsageError('--data needs --stimuli (a CSV with stimulus_id and image paths, or an image folder)')
    if args.stimuli and not args.data:
        raise UsageError('--stimuli needs --data (the recordings of the responses to them, a NetCDF file)')
    if not (args.data or args.benchmarks or args.v1_properties):
        raise UsageError('nothing to map against: give --data with --stimuli (your recordings), --benchmarks IDS '
                         '(Brain-Score benchmark ids), or --v1-properties')
    if args.data:
        _input_file('--data', args.data)
        _input_file('--stimuli', args.stimuli, folder_ok=True)
    if args.weights:
        _input_file('--weights', args.weights)
    from ..brain.commitments import UnknownLayerError
    from ..scoring.mapping import DEGENERATE_MARK, DegenerateScoreWarning, map_layers  # imports Brain-Score: seconds
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always', DegenerateScoreWarning)
            mapping = map_layers(identifier, recordings=args.data, stimuli=args.stimuli, benchmarks=args.benchmarks,
                                 layers=args.layers, include_v1_properties=args.v1_properties, metric=args.metric,
                                 pretrained=not args.untrained, weights_path=args.weights,
                                 batch_size=args.batch_size, progress=not args.quiet)
    except UnknownLayerError as error:
        if not args.layers:
            raise
        raise UsageError(f"--layers: {error}") from None
    for warning in caught:  # the others go out as they would have
        if issubclass(warning.category, DegenerateScoreWarning):
            print(f'warning: {warning.message}', file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    print(mapping.formatted_scores().to_string())
    degenerate = mapping.degenerate()
    if degenerate:
        print(f'{DEGENERATE_MARK}: degenerate, left out of the best-layer choice:')
        for (layer, benchmark), reason in degenerate.items():
            print(f'  {layer} / {benchmark}: {reason}')
    print()
    print(mapping.best_layers().round(3).to_string())
    for kind, path in mapping.save(output).items():
        print(f'wrote {kind}: {path}')


def _map_layers_arguments(parser):
    parser.add_argument('model', help='brain model identifier, e.g. vonenet_resnet50_nonoise')
    parser.add_argument('--data', metavar='NETCDF', help='your recordings (presentation x neuroid [x time_bin])')
    parser.add_argument('--stimuli', metavar='CSV_OR_DIR', help='their images: CSV (stimulus_id, path) or a folder')
    parser.add_argument('--benchmarks', nargs='*', default=[], help="Brain-Score benchmark ids (and/or 'v1-properties')")
    parser.add_argument('--v1-properties', action='store_true',
                        help='also run the offline V1 property suite on every layer (minutes per layer)')
    parser.add_argument('--layers', nargs='+', help='layers to map (default: the candidate layers in commitments/)')
    parser.add_argument('--metric', choices=['pls', 'ridge'], default='pls', help='regression for predictivity')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--weights', metavar='PATH', help='checkpoint file in the published training format')
    source.add_argument('--untrained', action='store_true', help='untrained back-end on purpose')
    parser.add_argument('--batch-size', type=POSITIVE_INT, default=16, help='images per forward pass (default 16)')
    parser.add_argument('--output', metavar='DIR', default='layer_mapping', help='folder for CSV, JSON and heatmap')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


map_layers_command.arguments = _map_layers_arguments


# --- validate -------------------------------------------------------------------------------------
@verb('validate', 'ImageNet-style validation: top-1, top-5 and loss on <in-path>/val (an ImageFolder)')
def validate_command(args):
    from ..training.imagenet import validate
    if args.output:
        _output_file('--output', args.output, '.json')
    model, weights = _load_model(args)
    result = validate(model, args.in_path, split=args.split, batch_size=args.batch_size, workers=args.workers,
                      ngpus=args.ngpus, noise_seed=args.noise_seed, max_images=args.max_images,
                      progress=not args.quiet)
    result = {'model': args.model, 'weights': weights, 'noise': not args.no_noise, **result}
    print(f"{args.model} on {result['n_images']} images of {result['n_classes']} classes ({args.in_path}/{args.split}): "
          f"top-1 {result['top1']:.4f}, top-{result['topk']} {result['top5']:.4f}, loss {result['loss']:.4f} "
          f"({result['images_per_second']:.1f} images/s on {result['device']})")
    if args.untrained:
        print('warning: untrained back-end: accuracy is at chance by construction', file=sys.stderr)
    _write_json(args.output, result)


def _validate_arguments(parser):
    _model_arguments(parser)
    parser.add_argument('--in-path', required=True, metavar='DIR', help='folder holding val/<class>/<image>')
    parser.add_argument('--split', default='val', help='sub-folder to evaluate (default val)')
    _loader_arguments(parser, batch_size=128)
    parser.add_argument('--noise-seed', type=SEED, default=0,
                        help='seed of the VOneBlock noise, for reproducible numbers (default 0)')
    parser.add_argument('--max-images', type=POSITIVE_INT, help='evaluate an evenly spaced subset of this many images')
    parser.add_argument('--output', metavar='JSON', help='write the result as JSON')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')


def _loader_arguments(parser, batch_size):
    from ..constants import DEFAULT_WORKERS
    shown = batch_size if batch_size is not None else 256
    parser.add_argument('--batch-size', type=POSITIVE_INT, default=batch_size,
                        help=f'images per batch (default {shown})')
    parser.add_argument('--workers', type=COUNT, default=DEFAULT_WORKERS,
                        help=f'data-loading processes (default {DEFAULT_WORKERS}; 0: load in the main process)')
    parser.add_argument('--ngpus', type=COUNT, default=0, help='GPUs to use (default 0: the CPU)')


validate_command.arguments = _validate_arguments


# --- train ----------------------------------------------------------------------------------------
@verb('train', "train or fine-tune a VOneNet on an ImageFolder with the original recipe (torchrun for several GPUs)")
def train_command(args):
    from ..training.imagenet import train
    _output_dir('--output-path', args.output_path)
    if args.resume:
        _input_file('--resume', args.resume, folder_ok=True)
    if args.weights:
        _input_file('--weights', args.weights)
    if args.change_recipe and not args.resume:
        raise UsageError('--change-recipe changes the recipe of a resumed run; it needs --resume')
    settings = {'noise_mode': None} if args.no_noise else {}
    if args.image_size is not None:
        settings['image_size'] = args.image_size
    history = train(args.in_path, args.output_path, args.model, pretrained=args.pretrained,
                    weights_path=args.weights, num_classes=args.num_classes, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                    step_size=args.step_size, step_factor=args.step_factor, seed=args.seed, workers=args.workers,
                    ngpus=args.ngpus, resume=args.resume, change_recipe=args.change_recipe,
                    progress=not args.quiet, **settings)
    if int(os.environ.get('RANK', 0)) != 0:
        return
    rows = [(r['epoch'], f"{r['lr']:.4g}", f"{r['train_loss']:.4f}", f"{r['train_top1']:.4f}",
             f"{r['val_top1']:.4f}" if 'val_top1' in r else '-', r.get('checkpoint', '')) for r in history]
    _print_table(('epoch', 'lr', 'train loss', 'train top-1', 'val top-1', 'checkpoint'), rows)


def _train_arguments(parser):
    parser.add_argument('model', help="back-end recipe to train: a published name (resnet50, alexnet, cornets, ...)")
    parser.add_argument('--in-path', required=True, metavar='DIR', help='folder holding train/ (and val/) ImageFolders')
    parser.add_argument('--output-path', required=True, metavar='DIR', help='where checkpoints and history.json go')
    # Recipe defaults are None so that --resume can tell a value given from one left out (then the
    # checkpoint's value holds); train() applies the recipe's defaults, named in the help.
    parser.add_argument('--epochs', type=POSITIVE_INT, help='total epochs to reach (default 70; with --resume: the '
                                                            "checkpoint's; may change freely, it only sets the end)")
    parser.add_argument('--lr', type=POSITIVE_FLOAT, help='initial learning rate (default 0.1)')
    parser.add_argument('--momentum', type=NON_NEGATIVE_FLOAT, help='SGD momentum (default 0.9)')
    parser.add_argument('--weight-decay', type=NON_NEGATIVE_FLOAT, help='weight decay (default 1e-4)')
    parser.add_argument('--step-size', type=POSITIVE_INT, help='epochs between learning-rate steps (default 20)')
    parser.add_argument('--step-factor', type=POSITIVE_FLOAT, help='learning-rate factor per step (default 0.1)')
    parser.add_argument('--seed', type=SEED, help='seed of initialisation, shuffling and noise (default 0)')
    _loader_arguments(parser, batch_size=None)
    parser.add_argument('--num-classes', type=POSITIVE_INT,
                        help='classifier size (default: the number of class folders)')
    parser.add_argument('--resume', metavar='PATH', help='continue from a checkpoint (or the latest in a folder); '
                        "recipe values left out come from it, and arguments that contradict it are refused")
    parser.add_argument('--change-recipe', action='store_true',
                        help='with --resume: let --lr, --momentum, --weight-decay, --step-size, --step-factor, '
                             '--batch-size and --seed differ from the checkpoint for the remaining epochs')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--pretrained', action='store_true', help='fine-tune from the published ImageNet weights')
    source.add_argument('--weights', metavar='PATH', help='fine-tune from this checkpoint (published format)')
    parser.add_argument('--no-noise', action='store_true', help='train without the VOneBlock noise')
    parser.add_argument('--image-size', type=_image_size_type(), help='input size in pixels (default 224 = 8 degrees)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


train_command.arguments = _train_arguments


# --- robustness -----------------------------------------------------------------------------------
@verb('robustness', 'white-box PGD (with EOT) and common corruptions: a VOneNet beside its plain back-end')
def robustness_command(args):
    from pathlib import Path
    from torchvision import transforms
    from .. import robustness
    from ..training.imagenet import image_folder, num_outputs
    output = _output_dir('--output', args.output, files=('robustness.csv', 'robustness.json', 'robustness.png'))
    if args.backend_weights:
        if args.no_backend:
            raise UsageError('--backend-weights are the weights of the plain back-end, which --no-backend leaves out; '
                             'drop one of the two')
        _input_file('--backend-weights', args.backend_weights)
    if args.device is not None:
        try:
            robustness.resolve_device(args.device)
        except RuntimeError as error:  # torch's own 'Expected one of cpu, cuda, ...'
            raise UsageError(f"--device {args.device!r} is not a device: use cpu, cuda or cuda:N") from error
        except errors.VOneNetError as error:
            raise UsageError(f'--device {args.device}: {error}') from None
    corruptions = _corruption_list(args.corruptions)
    unknown = [name for name in corruptions if name not in robustness.ALL_CORRUPTIONS]
    if unknown:
        raise UsageError(f"--corruptions: unknown {', '.join(map(repr, unknown))}; use common, extra, all, blur, none "
                         f"or names from {', '.join(robustness.ALL_CORRUPTIONS)}")
    model, weights = _load_model(args)
    models = {f'VOne{model.arch or "Net"}': robustness.pixel_space_model(model)}
    if not args.no_backend:
        try:
            models[f'{model.arch} (torchvision)'] = robustness.plain_backend_model(
                model.arch, num_classes=num_outputs(model), weights_path=args.backend_weights)
        except errors.VOneNetError as error:
            print(f'warning: no plain back-end to compare with: {error}', file=sys.stderr)
        if args.backend_weights is None:
            print('warning: the plain back-end has random weights (pass --backend-weights for a trained one)',
                  file=sys.stderr)
    size = model.image_size
    pixels = transforms.Compose([transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size),
                                 transforms.ToTensor()])  # [0, 1]: attacks and corruptions act on pixels
    data = image_folder(args.in_path, args.split, transform=pixels)
    attacks = [(norm, _eps_grid(args, norm)) for norm in args.attacks]
    table = robustness.evaluate_robustness(
        models, data, attacks=attacks, corruptions=corruptions, severities=args.severities,
        eot_draws=args.eot_draws, steps=args.steps, step_fraction=args.step_fraction, seed=args.seed,
        device=args.device,
        batch_size=args.batch_size, max_images=args.max_images, progress=not args.quiet)
    summary = table.pivot_table(index=['family', 'strength'], columns='model', values='accuracy', sort=False)
    print(summary.round(3).to_string())
    output.mkdir(parents=True, exist_ok=True)
    for path in (output / 'robustness.csv', output / 'robustness.json'):
        robustness.write_results(table, path)
    plot = robustness.plot_robustness(table, output / 'robustness.png', title=f'{args.model} ({weights})')
    print(f"wrote {output / 'robustness.csv'}, {output / 'robustness.json'} and {plot}")


def _eps_grid(args, norm):
    from ..robustness import DEFAULT_EPS
    chosen = getattr(args, f'eps_{norm}')
    return [float(eps) for eps in chosen] if chosen else list(DEFAULT_EPS[norm])


def _corruption_list(names):
    from ..robustness import corruption_names
    if names in (['none'], []):
        return []
    if len(names) == 1 and names[0] in ('common', 'extra', 'all', 'blur'):
        return corruption_names(names[0])
    return names


def _robustness_arguments(parser):
    _model_arguments(parser)
    parser.add_argument('--in-path', required=True, metavar='DIR', help='folder holding <split>/<class>/<image>')
    parser.add_argument('--split', default='val')
    parser.add_argument('--attacks', nargs='*', default=['linf', 'l2', 'l1'], choices=['linf', 'l2', 'l1'],
                        help='PGD norms (default all three; none: corruptions only)')
    for norm in ('linf', 'l2', 'l1'):
        parser.add_argument(f'--eps-{norm}', nargs='+', metavar='EPS', type=NON_NEGATIVE_FLOAT,
                            help=f'{norm} strengths in [0, 1] pixel units (default: 0 and doublings up to '
                                 f'the paper\'s high strength)')
    parser.add_argument('--steps', type=COUNT, default=64, help='PGD iterations (default 64, as the paper)')
    parser.add_argument('--step-fraction', type=POSITIVE_FLOAT, default=0.25,
                        help='PGD step size as a fraction of eps (default 0.25, as the paper)')
    parser.add_argument('--eot-draws', type=POSITIVE_INT, default=8,
                        help='noise draws averaged per gradient for stochastic models (default 8, as the paper)')
    parser.add_argument('--corruptions', nargs='*', default=['common'],
                        help="corruption names, or common (the 15 ImageNet-C), extra, all, blur, none")
    parser.add_argument('--severities', nargs='+', type=SEVERITY, default=[1, 2, 3, 4, 5],
                        help='corruption severities, 1 .. 5 (default all five)')
    parser.add_argument('--max-images', type=POSITIVE_INT, default=100, help='images to evaluate (default 100)')
    parser.add_argument('--batch-size', type=POSITIVE_INT, default=16, help='images per batch (default 16)')
    parser.add_argument('--no-backend', action='store_true', help='evaluate the VOneNet alone')
    parser.add_argument('--backend-weights', metavar='PATH', help='weights of the plain torchvision back-end')
    parser.add_argument('--seed', type=SEED, default=0, help='seed of attacks, noise draws and corruptions')
    parser.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--output', metavar='DIR', default='robustness', help='folder for CSV, JSON and plot')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


robustness_command.arguments = _robustness_arguments


# --- plugin ---------------------------------------------------------------------------------------
@verb('plugin', "install or remove the local Brain-Score plugin (so brainscore_vision.load_model finds our models)")
def plugin_command(args):
    from ..brain.plugin import install as plugin_tools
    if args.action == 'install':
        print(f'installed: {plugin_tools.install_plugin(models_dir=args.models_dir)}')
    elif args.action == 'uninstall':
        removed = plugin_tools.uninstall_plugin(models_dir=args.models_dir)
        print('removed' if removed else 'not installed; nothing to remove')
    elif not plugin_tools.is_installed(args.models_dir):
        print('not installed')
    else:
        print('installed' if plugin_tools.is_current(args.models_dir)
              else 'installed, but out of date (another vonenet-brainscore version wrote it): run plugin install')


def _plugin_arguments(parser):
    parser.add_argument('action', choices=['install', 'uninstall', 'status'])
    parser.add_argument('--models-dir', help="Brain-Score's models folder (default: the installed brainscore_vision's)")


plugin_command.arguments = _plugin_arguments


@verb('submission', "build (or --check) the zips Brain-Score's website accepts: one model per zip")
def submission_command(args):
    from .. import submission
    if args.check:
        failed = False
        for path in args.check:
            problems = submission.check_submission(path)
            for problem in problems:
                print(f'{path}: {problem}')
            print(f'{path}: ' + ('REJECTED by the website\'s rules' if problems else 'passes the website\'s checks'))
            failed = failed or bool(problems)
        if failed:
            raise errors.SubmissionError('at least one zip breaks a rule of the upload check (listed above)')
        return
    if args.all:
        for path in submission.build_all_submissions(args.all):
            print(f'wrote {path}')
        return
    if not args.model or not args.out_zip:
        raise errors.SubmissionError('give MODEL and OUT.zip (one zip per model), or --all DIR, or --check ZIP')
    print(f'wrote {submission.build_submission(args.model, args.out_zip)}')


def _submission_arguments(parser):
    parser.add_argument('model', nargs='?', help='brain model identifier, e.g. vonenet_resnet50 (or resnet50)')
    parser.add_argument('out_zip', nargs='?', help='path of the zip to write (OUT.zip)')
    parser.add_argument('--all', metavar='DIR', help='write one zip per identifier into DIR')
    parser.add_argument('--check', nargs='+', metavar='ZIP', help="run the website's upload checks on these zips")


submission_command.arguments = _submission_arguments


# --- plumbing -------------------------------------------------------------------------------------
def _print_table(header, rows):
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    line = lambda values: '  '.join(str(v).ljust(w) for v, w in zip(values, widths)).rstrip()
    print(line(header))
    print(line(['-' * w for w in widths]))
    for row in rows:
        print(line(row))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='vonenet-brainscore', description='VOneNets as Brain-Score brain models: '
                                     'build, classify, score, submit, validate, train, test robustness.')
    parser.add_argument('-v', '--verbose', action='store_true', help='log progress details')
    sub = parser.add_subparsers(dest='verb', metavar='VERB', required=True)
    for name, function in VERBS.items():
        verb_parser = sub.add_parser(name, help=function.verb_help, description=function.verb_help)
        function.arguments(verb_parser)
        verb_parser.set_defaults(run=function)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # argparse has printed usage and the error (exit 2), or --help (exit 0)
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 2)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s')
    try:
        with _progress_bars_off() if getattr(args, 'quiet', False) else contextlib.nullcontext():
            args.run(args)
    except errors.VOneNetError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
