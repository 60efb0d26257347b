"""Verbs that score brain models: ``score`` (the offline V1 property benchmarks) and ``map-layers``.

Thin: check every argument and output path first, call ``scoring``, print the tables and write the files.
"""
from __future__ import annotations

import sys

from .. import errors
from .arguments import POSITIVE_INT, SEED, input_file, output_dir, output_file, write_csv, write_json
from .registry import UsageError, print_table, verb


# --- score ----------------------------------------------------------------------------------------
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


@verb('score', 'score brain models (ours or any Brain-Score model) on the V1 property benchmarks (offline) '
               'and write table, JSON, CSV, figures', arguments=_score_arguments)
def score_command(args):
    outputs = _score_outputs(args)
    runs = _score_runs(args)
    per_model, records = [], []
    for index, (identifier, layer, flag) in enumerate(runs):
        main = index == 0
        results = _score_one(args, identifier, layer, flag, weights=args.weights if main else None,
                             untrained=args.untrained if main else False)
        label = results[0].model.split('@')[0] + (f' ({layer})' if layer else '')
        per_model.append((label, results))
        records += [{**r.as_dict(), 'layer': layer or 'committed V1'} for r in results]
    _print_scores(per_model)
    if not args.untrained and any(_is_untrained_stand_in(results[0].model) for _, results in per_model):
        print('note: the published weights could not be had, so the back-end is untrained (identifier tagged '
              '_untrained). V1 is the fixed, seeded VOneBlock, so these V1 scores do not depend on it.',
              file=sys.stderr)
    _write_scores(outputs, per_model, records)


def _score_runs(args):
    """(identifier, layer, flag naming it) of each model to score, the main one first; checked before any run."""
    from ..scoring.v1_properties.score import resolve_benchmarks
    if args.weights:
        input_file('--weights', args.weights)
    try:
        resolve_benchmarks(args.benchmarks)
    except errors.VOneNetError as error:
        raise UsageError(f'--benchmarks: {error}') from None
    runs = [(_score_name(args.model), args.layer, '--layer')]
    runs += [_against_entry(entry) for entry in args.against or []]
    names = [f'{name}@{layer}' if layer else name for name, layer, _ in runs]
    if len(set(names)) != len(names):
        raise UsageError(f"--against: each model (and layer) once; got {', '.join(names)}")
    return runs


def _is_untrained_stand_in(identifier: str) -> bool:
    """One of ours whose back-end the library built untrained: it tags the identifier so."""
    from ..published.naming import IDENTIFIERS, UNTRAINED_TAG
    public = identifier.split('@')[0]
    return public.endswith(UNTRAINED_TAG) and public[:-len(UNTRAINED_TAG)] in IDENTIFIERS


def _print_scores(per_model) -> None:
    """One model: its scores, raw scores and ceilings; several: a score column per model."""
    if len(per_model) == 1:
        rows = [(r.benchmark, f'{r.score:.3f}', f'{r.raw:.3f}', f'{r.ceiling:.3f}', len(r.model_values))
                for r in per_model[0][1]]
        print_table(('benchmark', 'score', 'raw', 'ceiling', 'model neurons'), rows)
    else:  # one joint table: a score column per model (its neurons in brackets)
        header = ('benchmark',) + tuple(label for label, _ in per_model)
        rows = [(r.benchmark,) + tuple(f'{results[i].score:.3f} ({len(results[i].model_values)})'
                                      for _, results in per_model)
                for i, r in enumerate(per_model[0][1])]
        print_table(header, rows)
        print('(score, model neurons in brackets; each run\'s raw score and ceiling are in the JSON/CSV)')
    for (label, results) in per_model:
        print(f'model {label}: {results[0].settings}')


def _write_scores(outputs, per_model, records) -> None:
    from ..scoring.v1_properties.figures import plot_properties
    output, csv_path, figures = outputs
    write_json(output, records)
    if csv_path is not None:
        write_csv(csv_path, records)
        print(f'wrote {csv_path}')
    if figures is not None:
        for i, result in enumerate(per_model[0][1]):
            plot_properties([(label, results[i]) for label, results in per_model],
                            figures / f'{result.benchmark}.png')
        print(f'wrote {len(per_model[0][1])} figures to {figures}/')


def _score_name(name: str) -> str:
    """Ours by catalogue name or identifier (resolved), else any Brain-Score identifier as given."""
    from ..published.naming import LEGACY_NAMES, resolve
    try:
        return resolve(name)
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
    from ..scoring.v1_properties import score
    try:
        return score.score_v1_properties(identifier, args.benchmarks, layer=layer, weights_path=weights,
                                         pretrained=not untrained, noise_seed=args.noise_seed, seed=args.seed,
                                         batch_size=args.batch_size, progress=not args.quiet,
                                         announce=lambda line: print(f'memory: {line}', file=sys.stderr, flush=True))
    except UnknownLayerError as error:
        if not layer or layer not in error.layers:
            raise
        raise UsageError(f"{flag} {layer!r} is not a layer of {identifier}; valid layers: the candidate "
                         f"layers {', '.join(error.candidates)}, or any other module name of the network "
                         f"{_layer_listing_hint(identifier)}") from None


def _layer_listing_hint(identifier: str) -> str:
    from ..published.naming import spec
    try:
        return f"(`vonenet-brainscore info {spec(identifier).model} --untrained` lists its stages)"
    except errors.VOneNetError:
        return "(the names of its torch modules, e.g. features.2)"


def _score_outputs(args):
    """(JSON, CSV, figures folder) of the score verb, each checked before the run; None where not written."""
    output = output_file('--output', args.output, '.json') if args.output else None
    if args.csv:
        csv_path = output_file('--csv', args.csv, '.csv')
    else:
        csv_path = output.with_suffix('.csv') if output is not None else None
        if csv_path is not None:
            output_file('--output', csv_path, '.csv', about=' (the CSV written beside the JSON)')
    if args.figures:
        figures = output_dir('--figures', args.figures)
    else:
        figures = output.with_suffix('') if output is not None else None
        if figures is not None:
            output_dir('--output', figures, about=' (the figures folder written beside the JSON)')
    if figures is not None and figures.resolve() in {p.resolve() for p in (output, csv_path) if p is not None}:
        raise UsageError(f"--figures {figures} is the path of another output; give the figures their own folder")
    if output is not None and csv_path is not None and output.resolve() == csv_path.resolve():
        raise UsageError(f"--csv {csv_path} is the --output file; give them different names")
    return output, csv_path, figures


# --- map-layers -----------------------------------------------------------------------------------
MAPPING_FILES = ('layer_mapping.csv', 'layer_mapping.json', 'layer_mapping.png')


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


@verb('map-layers', 'score every candidate layer on every region (your recordings, Brain-Score ids, V1 properties)',
      arguments=_map_layers_arguments)
def map_layers_command(args):
    from ..published.naming import resolve
    output = output_dir('--output', args.output, files=MAPPING_FILES)
    identifier = resolve(args.model)
    _check_mapping_inputs(args)
    mapping = _run_mapping(args, identifier)
    _print_mapping(mapping)
    for kind, path in mapping.save(output).items():
        print(f'wrote {kind}: {path}')


def _check_mapping_inputs(args) -> None:
    if args.data and not args.stimuli:
        raise UsageError('--data needs --stimuli (a CSV with stimulus_id and image paths, or an image folder)')
    if args.stimuli and not args.data:
        raise UsageError('--stimuli needs --data (the recordings of the responses to them, a NetCDF file)')
    if not (args.data or args.benchmarks or args.v1_properties):
        raise UsageError('nothing to map against: give --data with --stimuli (your recordings), --benchmarks IDS '
                         '(Brain-Score benchmark ids), or --v1-properties')
    if args.data:
        input_file('--data', args.data)
        input_file('--stimuli', args.stimuli, folder_ok=True)
    if args.weights:
        input_file('--weights', args.weights)


def _run_mapping(args, identifier: str):
    """The mapping; degenerate-score warnings are printed as such, other warnings go out as they would have."""
    import warnings
    from ..brain.commitments import UnknownLayerError
    from ..scoring import mapping  # imports Brain-Score: seconds
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always', mapping.DegenerateScoreWarning)
            result = mapping.map_layers(identifier, recordings=args.data, stimuli=args.stimuli,
                                        benchmarks=args.benchmarks, layers=args.layers,
                                        include_v1_properties=args.v1_properties, metric=args.metric,
                                        pretrained=not args.untrained, weights_path=args.weights,
                                        batch_size=args.batch_size, progress=not args.quiet)
    except UnknownLayerError as error:
        if not args.layers:
            raise
        raise UsageError(f"--layers: {error}") from None
    for warning in caught:
        if issubclass(warning.category, mapping.DegenerateScoreWarning):
            print(f'warning: {warning.message}', file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return result


def _print_mapping(result) -> None:
    from ..scoring.mapping import DEGENERATE_MARK
    print(result.formatted_scores().to_string())
    degenerate = result.degenerate()
    if degenerate:
        print(f'{DEGENERATE_MARK}: degenerate, left out of the best-layer choice:')
        for (layer, benchmark), reason in degenerate.items():
            print(f'  {layer} / {benchmark}: {reason}')
    print()
    print(result.best_layers().round(3).to_string())
