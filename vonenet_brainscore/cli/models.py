"""Verbs about the published models themselves: ``models`` (the catalogue), ``info`` and ``classify``.

Also the model options the other verbs share (``model_arguments``) and how they load the model asked for.
"""
from __future__ import annotations

import json
import sys

from .. import errors
from .arguments import POSITIVE_INT, input_file
from .registry import UsageError, print_table, verb

CACHE_STATES = {'missing': 'not cached', 'verified': 'cached (verified download)',
                'unrecorded': 'cached (placed by hand)', 'changed': 'CHANGED since download: will be fetched again'}
"""How ``models`` words each ``PublishedModel.cache_state``."""


def model_arguments(parser):
    """MODEL, where its weights come from, and --no-noise."""
    parser.add_argument('model', help='published model name (see `vonenet-brainscore models`)')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--weights', metavar='PATH', help='checkpoint file in the published training format')
    source.add_argument('--untrained', action='store_true',
                        help='seeded VOneBlock and randomly initialised back-end (no weights needed)')
    parser.add_argument('--no-noise', action='store_true', help='switch the VOneBlock noise off')


def load_model(args):
    """The requested model, and a line saying where its weights came from."""
    from ..published import catalogue
    overrides = {'noise_mode': None} if args.no_noise else {}
    record = catalogue.model_record(args.model)
    if getattr(args, 'weights', None):
        input_file('--weights', args.weights)
    if getattr(args, 'untrained', False):
        return catalogue.get_model(args.model, pretrained=False, **overrides), 'none (untrained back-end, seeded)'
    if args.weights:
        return catalogue.get_model(args.model, weights_path=args.weights, **overrides), args.weights
    try:
        return catalogue.get_model(args.model, **overrides), str(record.cache_path)
    except errors.WeightsUnavailableError as error:
        raise errors.WeightsUnavailableError(f"{error}\n  - or pass --untrained to use the seeded VOneBlock with "
                                             f"an untrained back-end on purpose") from error


@verb('models', 'list the published VOneNets and whether their weights are cached', arguments=lambda parser: None)
def models_command(args):
    from ..published.catalogue import CATALOGUE
    from ..published.naming import brain_identifier
    rows = [(r.name, brain_identifier(r.name), r.arch, CACHE_STATES[r.cache_state], r.description)
            for r in CATALOGUE.values()]
    print_table(('model', 'brain model', 'back-end', 'weights', 'description'), rows)


@verb('info', 'build a model and print its summary (layers, VOneBlock settings, output shapes)',
      arguments=model_arguments)
def info_command(args):
    import torch
    model, weights = load_model(args)
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


def _classify_arguments(parser):
    model_arguments(parser)
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument('--top', type=POSITIVE_INT,
                        help="labels to show per image, 1 to the model's outputs (default 5, or all if fewer)")
    parser.add_argument('--json', action='store_true', help='also print the results as JSON')


@verb('classify', 'classify images with a VOneNet and print the top ImageNet labels', arguments=_classify_arguments)
def classify_command(args):
    import torch
    from ..preprocessing import load_batch
    model, weights = load_model(args)
    outputs = _num_outputs(model)
    if args.top is not None and args.top > outputs:
        raise UsageError(f"--top {args.top} asks for more labels than the model's {outputs} outputs; use --top 1 "
                         f"to {outputs}")
    top_k = args.top if args.top is not None else min(5, outputs)
    if args.untrained:
        print('warning: untrained back-end, labels are meaningless', file=sys.stderr)
    images = load_batch(args.images, model.image_size)
    with torch.no_grad():
        probabilities = model(images).softmax(dim=1)
    categories = _categories(outputs)
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


def _num_outputs(model) -> int:
    from ..training.models import num_outputs
    return num_outputs(model)


def _categories(outputs: int) -> list:
    """ImageNet's labels, or output indices for a model trained on other classes (said on stderr)."""
    from ..preprocessing import imagenet_categories
    categories = imagenet_categories()
    if outputs == len(categories):
        return categories
    print(f'note: the model has {outputs} outputs, not the {len(categories)} ImageNet classes; labels are '
          f'output indices (output i is the i-th class folder, in sorted order, it was trained on)', file=sys.stderr)
    return [f'output {i}' for i in range(outputs)]
