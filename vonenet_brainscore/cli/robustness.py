"""The ``robustness`` verb: white-box PGD (with EOT) and common corruptions, a VOneNet beside its plain back-end.

Thin: check the arguments, build the models and the pixel-space data, call ``robustness``, print the
accuracy table and write CSV, JSON and the plot.
"""
from __future__ import annotations

import sys

from .. import errors
from .arguments import COUNT, NON_NEGATIVE_FLOAT, POSITIVE_FLOAT, POSITIVE_INT, SEED, SEVERITY, input_file, output_dir
from .models import load_model, model_arguments
from .registry import UsageError, verb

NORMS = ('linf', 'l2', 'l1')
CORRUPTION_GROUPS = ('common', 'extra', 'all', 'blur')
RESULT_FILES = ('robustness.csv', 'robustness.json', 'robustness.png')


def _robustness_arguments(parser):
    model_arguments(parser)
    parser.add_argument('--in-path', required=True, metavar='DIR', help='folder holding <split>/<class>/<image>')
    parser.add_argument('--split', default='val')
    parser.add_argument('--attacks', nargs='*', default=list(NORMS), choices=list(NORMS),
                        help='PGD norms (default all three; none: corruptions only)')
    for norm in NORMS:
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


@verb('robustness', 'white-box PGD (with EOT) and common corruptions: a VOneNet beside its plain back-end',
      arguments=_robustness_arguments)
def robustness_command(args):
    from .. import robustness
    output = output_dir('--output', args.output, files=RESULT_FILES)
    corruptions = _check_robustness_inputs(args)
    model, weights = load_model(args)
    models = _models_to_compare(args, model)
    table = robustness.evaluate_robustness(
        models, _pixel_data(args, model.image_size), attacks=[(norm, _eps_grid(args, norm)) for norm in args.attacks],
        corruptions=corruptions, severities=args.severities, eot_draws=args.eot_draws, steps=args.steps,
        step_fraction=args.step_fraction, seed=args.seed, device=args.device, batch_size=args.batch_size,
        max_images=args.max_images, progress=not args.quiet)
    summary = table.pivot_table(index=['family', 'strength'], columns='model', values='accuracy', sort=False)
    print(summary.round(3).to_string())
    output.mkdir(parents=True, exist_ok=True)
    for path in (output / 'robustness.csv', output / 'robustness.json'):
        robustness.write_results(table, path)
    plot = robustness.plot_robustness(table, output / 'robustness.png', title=f'{args.model} ({weights})')
    print(f"wrote {output / 'robustness.csv'}, {output / 'robustness.json'} and {plot}")


def _check_robustness_inputs(args) -> list:
    """Every flag checked before a model is built; returns the corruption names to run."""
    from .. import robustness
    from ..devices import resolve_device
    if args.backend_weights:
        if args.no_backend:
            raise UsageError('--backend-weights are the weights of the plain back-end, which --no-backend leaves out; '
                             'drop one of the two')
        input_file('--backend-weights', args.backend_weights)
    if args.device is not None:
        try:
            resolve_device(args.device, ngpus=None)
        except RuntimeError as error:  # torch's own 'Expected one of cpu, cuda, ...'
            raise UsageError(f"--device {args.device!r} is not a device: use cpu, cuda or cuda:N") from error
        except errors.VOneNetError as error:
            raise UsageError(f'--device {args.device}: {error}') from None
    corruptions = _corruption_list(args.corruptions)
    unknown = [name for name in corruptions if name not in robustness.ALL_CORRUPTIONS]
    if unknown:
        raise UsageError(f"--corruptions: unknown {', '.join(map(repr, unknown))}; use common, extra, all, blur, none "
                         f"or names from {', '.join(robustness.ALL_CORRUPTIONS)}")
    return corruptions


def _models_to_compare(args, model) -> dict:
    """``{label: pixel-space model}``: the VOneNet, and its plain torchvision back-end unless --no-backend."""
    from .. import robustness
    from ..training.models import num_outputs
    models = {f'VOne{model.arch or "Net"}': robustness.pixel_space_model(model)}
    if args.no_backend:
        return models
    try:
        models[f'{model.arch} (torchvision)'] = robustness.plain_backend_model(
            model.arch, num_classes=num_outputs(model), weights_path=args.backend_weights)
    except errors.VOneNetError as error:
        print(f'warning: no plain back-end to compare with: {error}', file=sys.stderr)
    if args.backend_weights is None:
        print('warning: the plain back-end has random weights (pass --backend-weights for a trained one)',
              file=sys.stderr)
    return models


def _pixel_data(args, image_size: int):
    """The split's images with the evaluation crop in [0, 1] pixels: attacks and corruptions act on pixels
    (``pixel_space_model`` normalises inside the model), so the library's evaluation transform is used
    without its final Normalize."""
    from torchvision import transforms
    from ..preprocessing import evaluation_transform
    from ..training.data import image_folder
    steps = evaluation_transform(image_size).transforms
    assert isinstance(steps[-1], transforms.Normalize), steps  # the evaluation transform ends in Normalize
    return image_folder(args.in_path, args.split, transform=transforms.Compose(steps[:-1]))


def _eps_grid(args, norm):
    from ..robustness import DEFAULT_EPS
    chosen = getattr(args, f'eps_{norm}')
    return [float(eps) for eps in chosen] if chosen else list(DEFAULT_EPS[norm])


def _corruption_list(names):
    from ..robustness import corruption_names
    if names in (['none'], []):
        return []
    if len(names) == 1 and names[0] in CORRUPTION_GROUPS:
        return corruption_names(names[0])
    return names
