"""``vonenet-brainscore``: one verb per job. Thin: parse, call the library, print (and plot)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable, Dict

# Brain-Score otherwise pip-installs plugin requirements into whatever Python is on PATH, and probes
# cloud metadata for ~90 s before any S3 failure: the CLI process never does either (see brainscore_env).
from . import errors  # noqa: E402
from .brainscore_env import set_process_defaults  # noqa: E402

set_process_defaults()

VERBS: Dict[str, Callable] = {}


def verb(name: str, help: str):
    """Register ``function(args)`` as sub-command ``name``; ``function.arguments(parser)`` adds options."""
    def decorate(function):
        function.verb_help = help
        VERBS[name] = function
        return function
    return decorate


# --- models ---------------------------------------------------------------------------------------
@verb('models', 'list the published VOneNets and whether their weights are cached')
def models_command(args):
    from .zoo import CATALOGUE
    rows = [(r.name, r.arch, 'cached' if r.cache_path.exists() else 'not cached', r.description)
            for r in CATALOGUE.values()]
    _print_table(('model', 'back-end', 'weights', 'description'), rows)


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
    from .zoo import get_model, model_record
    overrides = {'noise_mode': None} if args.no_noise else {}
    record = model_record(args.model)
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
    from .preprocessing import imagenet_categories, load_batch
    model, weights = _load_model(args)
    if args.untrained:
        print('warning: untrained back-end, labels are meaningless', file=sys.stderr)
    images = load_batch(args.images, model.image_size)
    with torch.no_grad():
        probabilities = model(images).softmax(dim=1)
    categories = imagenet_categories()
    results = []
    for path, p in zip(args.images, probabilities):
        top = p.topk(args.top)
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
    parser.add_argument('--top', type=int, default=5, help='labels to show per image (default 5)')
    parser.add_argument('--json', action='store_true', help='also print the results as JSON')


classify_command.arguments = _classify_arguments


# --- score ----------------------------------------------------------------------------------------
@verb('score', 'score a brain model on the V1 property benchmarks (offline) and write table, JSON, CSV, figures')
def score_command(args):
    from pathlib import Path
    from .v1_properties.figures import plot_property
    from .v1_properties.score import score_v1_properties
    identifier = _brain_identifier(args.model)
    results = score_v1_properties(identifier, args.benchmarks, layer=args.layer, weights_path=args.weights,
                                  pretrained=not args.untrained, noise_seed=args.noise_seed, seed=args.seed,
                                  batch_size=args.batch_size, progress=not args.quiet)
    rows = [(r.benchmark, f'{r.score:.3f}', f'{r.raw:.3f}', f'{r.ceiling:.3f}', len(r.model_values))
            for r in results]
    _print_table(('benchmark', 'score', 'raw', 'ceiling', 'model neurons'), rows)
    records = [{**r.as_dict(), 'layer': args.layer or 'committed V1'} for r in results]
    print(f'model {records[0]["model"]}: {records[0]["settings"]}')
    if 'weights=untrained' in records[0]['settings'] and not args.untrained:
        print('note: the published weights could not be had, so the back-end is untrained (identifier tagged '
              '_untrained). V1 is the fixed, seeded VOneBlock, so these V1 scores do not depend on it.',
              file=sys.stderr)
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(records, indent=2) + '\n')
        csv_path = Path(args.csv) if args.csv else output.with_suffix('.csv')
        _write_csv(csv_path, records)
        print(f'wrote {output} and {csv_path}')
    figures = Path(args.figures) if args.figures else (Path(args.output).with_suffix('') if args.output else None)
    if figures is not None:
        for result in results:
            plot_property(result, figures / f'{result.benchmark}.png', model_label=result.model.split('@')[0])
        print(f'wrote {len(results)} figures to {figures}/')


def _score_arguments(parser):
    parser.add_argument('model', help='brain model identifier, e.g. vonenet_resnet50 or vonenet_resnet50_nonoise')
    parser.add_argument('--benchmarks', nargs='+', default=['v1-properties'],
                        help="'v1-properties' (the seven offline Marques2020 benchmarks) or benchmark ids")
    parser.add_argument('--layer', help='score this layer as V1 instead of the committed one')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--weights', metavar='PATH', help='checkpoint file in the published training format')
    source.add_argument('--untrained', action='store_true', help='untrained back-end on purpose')
    parser.add_argument('--noise-seed', type=int, default=0, help='seed of the VOneBlock noise draws (default 0)')
    parser.add_argument('--seed', type=int, default=0, help="seed of Brain-Score's bootstrap (default 0)")
    parser.add_argument('--batch-size', type=int, default=32, help='images per forward pass (default 32)')
    parser.add_argument('--output', metavar='JSON', help='write results as JSON (and CSV beside it, and figures)')
    parser.add_argument('--csv', metavar='CSV', help='CSV path (default: the JSON path with .csv)')
    parser.add_argument('--figures', metavar='DIR', help='folder for the figures (default: beside the JSON)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


score_command.arguments = _score_arguments


def _brain_identifier(name: str) -> str:
    """Accept a brain-model identifier, or a catalogue name such as 'resnet50'."""
    from .identifiers import resolve
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
    from .mapping import map_layers
    identifier = _brain_identifier(args.model)
    if args.data and not args.stimuli:
        raise errors.DataError('--data needs --stimuli (a CSV with stimulus_id and image paths, or an image folder)')
    mapping = map_layers(identifier, recordings=args.data, stimuli=args.stimuli, benchmarks=args.benchmarks,
                         layers=args.layers, include_v1_properties=args.v1_properties, metric=args.metric,
                         pretrained=not args.untrained, weights_path=args.weights, batch_size=args.batch_size,
                         progress=not args.quiet)
    print(mapping.scores.round(3).to_string())
    print()
    print(mapping.best_layers().round(3).to_string())
    for kind, path in mapping.save(args.output).items():
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
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--output', metavar='DIR', default='layer_mapping', help='folder for CSV, JSON and heatmap')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


map_layers_command.arguments = _map_layers_arguments


# --- validate -------------------------------------------------------------------------------------
@verb('validate', 'ImageNet-style validation: top-1, top-5 and loss on <in-path>/val (an ImageFolder)')
def validate_command(args):
    from .imagenet import validate
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
    parser.add_argument('--noise-seed', type=int, default=0,
                        help='seed of the VOneBlock noise, for reproducible numbers (default 0)')
    parser.add_argument('--max-images', type=int, help='evaluate an evenly spaced subset of this many images')
    parser.add_argument('--output', metavar='JSON', help='write the result as JSON')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')


def _loader_arguments(parser, batch_size):
    from .imagenet import DEFAULT_WORKERS
    parser.add_argument('--batch-size', type=int, default=batch_size, help=f'images per batch (default {batch_size})')
    parser.add_argument('--workers', type=int, default=DEFAULT_WORKERS,
                        help=f'data-loading processes (default {DEFAULT_WORKERS})')
    parser.add_argument('--ngpus', type=int, default=0, help='GPUs to use (default 0: the CPU)')


validate_command.arguments = _validate_arguments


# --- train ----------------------------------------------------------------------------------------
@verb('train', "train or fine-tune a VOneNet on an ImageFolder with the original recipe (torchrun for several GPUs)")
def train_command(args):
    from .imagenet import train
    settings = {'noise_mode': None} if args.no_noise else {}
    if args.image_size:
        settings['image_size'] = args.image_size
    history = train(args.in_path, args.output_path, args.model, pretrained=args.pretrained,
                    weights_path=args.weights, num_classes=args.num_classes, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                    step_size=args.step_size, step_factor=args.step_factor, seed=args.seed, workers=args.workers,
                    ngpus=args.ngpus, resume=args.resume, progress=not args.quiet, **settings)
    if int(os.environ.get('RANK', 0)) != 0:
        return
    rows = [(r['epoch'], f"{r['lr']:.4g}", f"{r['train_loss']:.4f}", f"{r['train_top1']:.4f}",
             f"{r['val_top1']:.4f}" if 'val_top1' in r else '-', r.get('checkpoint', '')) for r in history]
    _print_table(('epoch', 'lr', 'train loss', 'train top-1', 'val top-1', 'checkpoint'), rows)


def _train_arguments(parser):
    parser.add_argument('model', help="back-end recipe to train: a published name (resnet50, alexnet, cornets, ...)")
    parser.add_argument('--in-path', required=True, metavar='DIR', help='folder holding train/ (and val/) ImageFolders')
    parser.add_argument('--output-path', required=True, metavar='DIR', help='where checkpoints and history.json go')
    parser.add_argument('--epochs', type=int, default=70, help='total epochs (default 70)')
    parser.add_argument('--lr', type=float, default=0.1, help='initial learning rate (default 0.1)')
    parser.add_argument('--momentum', type=float, default=0.9)
    parser.add_argument('--weight-decay', type=float, default=1e-4)
    parser.add_argument('--step-size', type=int, default=20, help='epochs between learning-rate steps (default 20)')
    parser.add_argument('--step-factor', type=float, default=0.1, help='learning-rate factor per step (default 0.1)')
    parser.add_argument('--seed', type=int, default=0, help='seed of initialisation, shuffling and noise (default 0)')
    _loader_arguments(parser, batch_size=256)
    parser.add_argument('--num-classes', type=int, help='classifier size (default: the number of class folders)')
    parser.add_argument('--resume', metavar='PATH', help='continue from a checkpoint (or the latest in a folder)')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--pretrained', action='store_true', help='fine-tune from the published ImageNet weights')
    source.add_argument('--weights', metavar='PATH', help='fine-tune from this checkpoint (published format)')
    parser.add_argument('--no-noise', action='store_true', help='train without the VOneBlock noise')
    parser.add_argument('--image-size', type=int, help='input size in pixels (default 224 = 8 degrees)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


train_command.arguments = _train_arguments


# --- robustness -----------------------------------------------------------------------------------
@verb('robustness', 'white-box PGD (with EOT) and common corruptions: a VOneNet beside its plain back-end')
def robustness_command(args):
    from pathlib import Path
    from torchvision import transforms
    from . import robustness
    from .imagenet import image_folder, num_outputs
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
    corruptions = _corruption_list(args.corruptions)
    table = robustness.evaluate_robustness(
        models, data, attacks=attacks, corruptions=corruptions, severities=args.severities,
        eot_draws=args.eot_draws, steps=args.steps, step_fraction=args.step_fraction, seed=args.seed,
        device=args.device,
        batch_size=args.batch_size, max_images=args.max_images, progress=not args.quiet)
    summary = table.pivot_table(index=['family', 'strength'], columns='model', values='accuracy', sort=False)
    print(summary.round(3).to_string())
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for path in (output / 'robustness.csv', output / 'robustness.json'):
        robustness.write_results(table, path)
    plot = robustness.plot_robustness(table, output / 'robustness.png', title=f'{args.model} ({weights})')
    print(f"wrote {output / 'robustness.csv'}, {output / 'robustness.json'} and {plot}")


def _eps_grid(args, norm):
    from .robustness import DEFAULT_EPS
    chosen = getattr(args, f'eps_{norm}')
    return [float(eps) for eps in chosen] if chosen else list(DEFAULT_EPS[norm])


def _corruption_list(names):
    from .robustness import corruption_names
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
        parser.add_argument(f'--eps-{norm}', nargs='+', metavar='EPS',
                            help=f'{norm} strengths in [0, 1] pixel units (default: 0 and doublings up to '
                                 f'the paper\'s high strength)')
    parser.add_argument('--steps', type=int, default=64, help='PGD iterations (default 64, as the paper)')
    parser.add_argument('--step-fraction', type=float, default=0.25,
                        help='PGD step size as a fraction of eps (default 0.25, as the paper)')
    parser.add_argument('--eot-draws', type=int, default=8,
                        help='noise draws averaged per gradient for stochastic models (default 8, as the paper)')
    parser.add_argument('--corruptions', nargs='*', default=['common'],
                        help="corruption names, or common (the 15 ImageNet-C), extra, all, blur, none")
    parser.add_argument('--severities', nargs='+', type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument('--max-images', type=int, default=100, help='images to evaluate (default 100)')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--no-backend', action='store_true', help='evaluate the VOneNet alone')
    parser.add_argument('--backend-weights', metavar='PATH', help='weights of the plain torchvision back-end')
    parser.add_argument('--seed', type=int, default=0, help='seed of attacks, noise draws and corruptions')
    parser.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--output', metavar='DIR', default='robustness', help='folder for CSV, JSON and plot')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


robustness_command.arguments = _robustness_arguments


# --- plugin ---------------------------------------------------------------------------------------
@verb('plugin', "install or remove the local Brain-Score plugin (so brainscore_vision.load_model finds our models)")
def plugin_command(args):
    from . import plugin_tools
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
    from . import submission
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
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s')
    try:
        args.run(args)
    except errors.VOneNetError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
