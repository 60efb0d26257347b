"""Verbs that evaluate and train on an ImageFolder: ``validate`` and ``train`` (torchrun for several GPUs).

The recipe's defaults are read from ``training.recipe`` (no torch) and only named in the help: ``train``
receives None for a value left out, so a resumed run keeps its checkpoint's value.
"""
from __future__ import annotations

import os
import sys

from .arguments import (COUNT, NON_NEGATIVE_FLOAT, POSITIVE_FLOAT, POSITIVE_INT, SEED, image_size_type, input_file,
                        output_dir, output_file, write_json)
from .models import load_model, model_arguments
from .registry import UsageError, print_table, verb


def _loader_arguments(parser, batch_size):
    """--batch-size (default ``batch_size``; None: the recipe's, applied by ``train``), --workers, --ngpus."""
    from ..training.recipe import DEFAULTS
    shown = batch_size if batch_size is not None else DEFAULTS.batch_size
    parser.add_argument('--batch-size', type=POSITIVE_INT, default=batch_size,
                        help=f'images per batch (default {shown})')
    parser.add_argument('--workers', type=COUNT, default=DEFAULTS.workers,
                        help=f'data-loading processes (default {DEFAULTS.workers}; 0: load in the main process)')
    parser.add_argument('--ngpus', type=COUNT, default=0, help='GPUs to use (default 0: the CPU)')


# --- validate -------------------------------------------------------------------------------------
def _validate_arguments(parser):
    model_arguments(parser)
    parser.add_argument('--in-path', required=True, metavar='DIR', help='folder holding val/<class>/<image>')
    parser.add_argument('--split', default='val', help='sub-folder to evaluate (default val)')
    _loader_arguments(parser, batch_size=128)
    parser.add_argument('--noise-seed', type=SEED, default=0,
                        help='seed of the VOneBlock noise, for reproducible numbers (default 0)')
    parser.add_argument('--max-images', type=POSITIVE_INT, help='evaluate an evenly spaced subset of this many images')
    parser.add_argument('--output', metavar='JSON', help='write the result as JSON')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')


@verb('validate', 'ImageNet-style validation: top-1, top-5 and loss on <in-path>/val (an ImageFolder)',
      arguments=_validate_arguments)
def validate_command(args):
    from ..training import evaluate
    if args.output:
        output_file('--output', args.output, '.json')
    model, weights = load_model(args)
    result = evaluate.validate(model, args.in_path, split=args.split, batch_size=args.batch_size,
                               workers=args.workers, ngpus=args.ngpus, noise_seed=args.noise_seed,
                               max_images=args.max_images, progress=not args.quiet)
    result = {'model': args.model, 'weights': weights, 'noise': not args.no_noise, **result}
    print(f"{args.model} on {result['n_images']} images of {result['n_classes']} classes ({args.in_path}/{args.split}): "
          f"top-1 {result['top1']:.4f}, top-{result['topk']} {result['top5']:.4f}, loss {result['loss']:.4f} "
          f"({result['images_per_second']:.1f} images/s on {result['device']})")
    if args.untrained:
        print('warning: untrained back-end: accuracy is at chance by construction', file=sys.stderr)
    write_json(args.output, result)


# --- train ----------------------------------------------------------------------------------------
def _recipe_arguments(parser):
    """The recipe's hyper-parameters. Their defaults are None so that --resume can tell a value given from
    one left out (then the checkpoint's value holds); ``train`` applies the recipe's defaults, named here."""
    from ..training.recipe import DEFAULTS as D
    parser.add_argument('--epochs', type=POSITIVE_INT, help=f'total epochs to reach (default {D.epochs}; with '
                        "--resume: the checkpoint's; may change freely, it only sets the end)")
    parser.add_argument('--lr', type=POSITIVE_FLOAT, help=f'initial learning rate (default {D.lr:g})')
    parser.add_argument('--momentum', type=NON_NEGATIVE_FLOAT, help=f'SGD momentum (default {D.momentum:g})')
    parser.add_argument('--weight-decay', type=NON_NEGATIVE_FLOAT, help=f'weight decay (default {D.weight_decay:g})')
    parser.add_argument('--step-size', type=POSITIVE_INT,
                        help=f'epochs between learning-rate steps (default {D.step_size})')
    parser.add_argument('--step-factor', type=POSITIVE_FLOAT,
                        help=f'learning-rate factor per step (default {D.step_factor:g})')
    parser.add_argument('--seed', type=SEED, help=f'seed of initialisation, shuffling and noise (default {D.seed})')


def _train_arguments(parser):
    parser.add_argument('model', help="back-end recipe to train: a published name (resnet50, alexnet, cornets, ...)")
    parser.add_argument('--in-path', required=True, metavar='DIR', help='folder holding train/ (and val/) ImageFolders')
    parser.add_argument('--output-path', required=True, metavar='DIR', help='where checkpoints and history.json go')
    _recipe_arguments(parser)
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
    parser.add_argument('--image-size', type=image_size_type(), help='input size in pixels (default 224 = 8 degrees)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


@verb('train', "train or fine-tune a VOneNet on an ImageFolder with the original recipe (torchrun for several GPUs)",
      arguments=_train_arguments)
def train_command(args):
    from ..training import train as training
    _check_train_inputs(args)
    settings = {'noise_mode': None} if args.no_noise else {}
    if args.image_size is not None:
        settings['image_size'] = args.image_size
    history = training.train(args.in_path, args.output_path, args.model, pretrained=args.pretrained,
                             weights_path=args.weights, num_classes=args.num_classes, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                             weight_decay=args.weight_decay, step_size=args.step_size, step_factor=args.step_factor,
                             seed=args.seed, workers=args.workers, ngpus=args.ngpus, resume=args.resume,
                             change_recipe=args.change_recipe, progress=not args.quiet, **settings)
    if int(os.environ.get('RANK', 0)) != 0:
        return
    rows = [(r['epoch'], f"{r['lr']:.4g}", f"{r['train_loss']:.4f}", f"{r['train_top1']:.4f}",
             f"{r['val_top1']:.4f}" if 'val_top1' in r else '-', r.get('checkpoint', '')) for r in history]
    print_table(('epoch', 'lr', 'train loss', 'train top-1', 'val top-1', 'checkpoint'), rows)


def _check_train_inputs(args) -> None:
    output_dir('--output-path', args.output_path)
    if args.resume:
        input_file('--resume', args.resume, folder_ok=True)
    if args.weights:
        input_file('--weights', args.weights)
    if args.change_recipe and not args.resume:
        raise UsageError('--change-recipe changes the recipe of a resumed run; it needs --resume')
