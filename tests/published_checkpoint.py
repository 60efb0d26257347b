"""Checkpoints written exactly as the original VOneNet training code saves them (the published format)."""
import torch
from torch import nn


def randomise_(model, seed):
    """Give every trainable weight and BN statistic non-trivial values (the VOneBlock stays fixed),
    so equal logits mean equal loading, not equal initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.startswith('vone_block') or not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if 'running_var' in name:
                tensor.copy_(0.5 + noise.abs())
            elif tensor.dim() > 1:
                tensor.copy_(noise * (2.0 / tensor[0].numel()) ** 0.5)
            else:
                tensor.copy_(0.1 * noise)


def published_checkpoint(reference, arch, path, noise_mode, seed=3, module_prefix=True):
    """Write a checkpoint with the original code (``reference``: the vendored VOneNet package) as its
    training loop saves one: flags, epoch, DataParallel state dict, optimizer. Returns the model."""
    torch.manual_seed(seed)  # the original draws colour channels from the global RNG
    flags = {'arch': arch, 'stride': 4, 'simple_channels': 256, 'complex_channels': 256, 'k_exc': 25.0,
             'noise_mode': noise_mode, 'noise_scale': 0.35, 'noise_level': 0.07, 'ksize': 25,
             'gabor_seed': 0, 'sf_corr': 0.75, 'sf_max': 9, 'sf_min': 0, 'rand_param': False,
             'visual_degrees': 8, 'in_path': '/data/imagenet', 'batch_size': 256, 'lr': 0.1, 'epochs': 70}
    model = reference.VOneNet(model_arch=arch, noise_mode=noise_mode, noise_scale=0.35, noise_level=0.07)
    randomise_(model, seed)
    saved = nn.DataParallel(model) if module_prefix else model
    optimizer = torch.optim.SGD(saved.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    torch.save({'flags': flags, 'epoch': 70, 'state_dict': saved.state_dict(),
                'optimizer': optimizer.state_dict()}, path)
    return model.eval()
