"""Robustness of VOneNets and their plain back-ends to white-box attacks and common corruptions
(Dapello, Marques et al. 2020, NeurIPS): PGD with EOT over the VOneBlock's noise, ImageNet-C
corruptions, side-by-side evaluation, tables and plots."""
from .attacks import (DEFAULT_EPS, NORMS, PAPER_EOT_DRAWS, PAPER_EPS_HIGH, PAPER_EPS_LOW, PAPER_STEP_FRACTION,
                      PAPER_STEPS, AttackError, eot_gradient, is_stochastic, perturbation_norms, pgd, project,
                      project_l1_ball, seeded_noise)
from .corruptions import (ALL_CORRUPTIONS, BLUR_CORRUPTIONS, COMMON_CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES,
                          CorruptionError, corrupt_batch, corrupt_image, corruption_names)
from .evaluate import DEFAULT_ATTACKS, evaluate_robustness, resolve_device
from .models import IMAGENET_MEAN, IMAGENET_STD, PixelSpaceModel, pixel_space_model, plain_backend_model
from .report import plot_robustness, read_results, write_results

__all__ = ['pgd', 'eot_gradient', 'project', 'project_l1_ball', 'perturbation_norms', 'is_stochastic',
           'seeded_noise', 'AttackError', 'NORMS', 'DEFAULT_EPS', 'PAPER_EPS_LOW', 'PAPER_EPS_HIGH', 'PAPER_STEPS',
           'PAPER_STEP_FRACTION', 'PAPER_EOT_DRAWS', 'corrupt_image', 'corrupt_batch', 'corruption_names',
           'CorruptionError', 'COMMON_CORRUPTIONS', 'EXTRA_CORRUPTIONS', 'ALL_CORRUPTIONS', 'BLUR_CORRUPTIONS',
           'SEVERITIES', 'evaluate_robustness', 'DEFAULT_ATTACKS', 'resolve_device', 'pixel_space_model',
           'plain_backend_model', 'PixelSpaceModel', 'IMAGENET_MEAN', 'IMAGENET_STD', 'write_results',
           'read_results', 'plot_robustness']
