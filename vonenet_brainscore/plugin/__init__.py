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

model_registry['vonenet_resnet50'] = lambda: brain_model('vonenet_resnet50')
model_registry['vonenet_resnet50_nonoise'] = lambda: brain_model('vonenet_resnet50_nonoise')
model_registry['vonenet_cornets'] = lambda: brain_model('vonenet_cornets')
model_registry['vonenet_cornets_nonoise'] = lambda: brain_model('vonenet_cornets_nonoise')
model_registry['vonenet_alexnet'] = lambda: brain_model('vonenet_alexnet')
model_registry['vonenet_alexnet_nonoise'] = lambda: brain_model('vonenet_alexnet_nonoise')
model_registry['vonenet_resnet50_at'] = lambda: brain_model('vonenet_resnet50_at')
model_registry['vonenet_resnet50_at_nonoise'] = lambda: brain_model('vonenet_resnet50_at_nonoise')
model_registry['vonenet_resnet50_ns'] = lambda: brain_model('vonenet_resnet50_ns')
model_registry['vonenet_resnet50_ns_nonoise'] = lambda: brain_model('vonenet_resnet50_ns_nonoise')
