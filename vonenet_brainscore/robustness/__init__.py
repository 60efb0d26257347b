"""Uses of a model: robustness of VOneNets and their plain back-ends to white-box attacks and common
corruptions (Dapello, Marques et al. 2020, NeurIPS).

The steps: models.py (networks that take [0, 1] pixels), attacks.py (PGD with EOT over the VOneBlock's
noise), corruptions.py (ImageNet-C), evaluate.py (every model on the same images, side by side),
report.py (tables and plots). Names load on first use (PEP 562), so importing this package costs
nothing until one is used.
"""
_LAZY = {
    **dict.fromkeys(('pgd', 'eot_gradient', 'project', 'project_l1_ball', 'perturbation_norms', 'is_stochastic',
                     'AttackError', 'NORMS', 'DEFAULT_EPS', 'PAPER_EPS_LOW', 'PAPER_EPS_HIGH', 'PAPER_STEPS',
                     'PAPER_STEP_FRACTION', 'PAPER_EOT_DRAWS'), '.attacks'),
    'seeded_noise': '..vone.noise',
    **dict.fromkeys(('corrupt_image', 'corrupt_batch', 'corruption_names', 'CorruptionError', 'COMMON_CORRUPTIONS',
                     'EXTRA_CORRUPTIONS', 'ALL_CORRUPTIONS', 'BLUR_CORRUPTIONS', 'SEVERITIES'), '.corruptions'),
    **dict.fromkeys(('evaluate_robustness', 'DEFAULT_ATTACKS'), '.evaluate'),
    **dict.fromkeys(('pixel_space_model', 'plain_backend_model', 'PixelSpaceModel', 'IMAGENET_MEAN',
                     'IMAGENET_STD'), '.models'),
    **dict.fromkeys(('write_results', 'read_results', 'plot_robustness'), '.report'),
}
"""Public name -> the module (relative to this package) that defines it."""


def __getattr__(name):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = list(_LAZY)
