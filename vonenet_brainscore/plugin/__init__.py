"""Brain-Score model plugin: the VOneNets of Dapello, Marques et al. 2020 (NeurIPS).

The plugin is thin. Everything lives in the pip-installed package ``vonenet-brainscore``
(see requirements.txt); this folder only registers its Brain-Score identifiers.

Brain-Score finds a model by scanning this file's text for the registry subscript with the
identifier written out, so each identifier is registered literally on a line of its own below
(a loop would not be found), and the subscript appears nowhere else in this file.
Without the published weights (no network and nothing cached) ``brain_model`` warns and
builds the untrained model, tagging its identifier '-untrained'.
"""
from brainscore_vision import model_registry

from vonenet_brainscore.brain import brain_model

model_registry['vonenet-resnet50'] = lambda: brain_model('vonenet-resnet50')
model_registry['vonenet-resnet50-nonoise'] = lambda: brain_model('vonenet-resnet50-nonoise')
model_registry['vonenet-cornets'] = lambda: brain_model('vonenet-cornets')
model_registry['vonenet-cornets-nonoise'] = lambda: brain_model('vonenet-cornets-nonoise')
model_registry['vonenet-alexnet'] = lambda: brain_model('vonenet-alexnet')
model_registry['vonenet-alexnet-nonoise'] = lambda: brain_model('vonenet-alexnet-nonoise')
model_registry['vonenet-resnet50-at'] = lambda: brain_model('vonenet-resnet50-at')
model_registry['vonenet-resnet50-at-nonoise'] = lambda: brain_model('vonenet-resnet50-at-nonoise')
model_registry['vonenet-resnet50-ns'] = lambda: brain_model('vonenet-resnet50-ns')
model_registry['vonenet-resnet50-ns-nonoise'] = lambda: brain_model('vonenet-resnet50-ns-nonoise')
