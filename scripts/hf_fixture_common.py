"""Shared by scripts/make-unseen-families.py and scripts/make-popular-configs.py (tiny random HF checkpoints)."""

import torch


def init_weights(model, seed: int):
    """Draw every parameter like the shared references: matrices N(0, 0.1^2), biases N(0, 0.05^2), norm weights
    1 + N(0, 0.1^2), from a generator with a fixed seed, in named_parameters() order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                v = torch.randn(p.shape, generator=g) * 0.05
            elif p.dim() == 1 and ("norm" in name or "ln" in name):
                v = 1.0 + torch.randn(p.shape, generator=g) * 0.1
            else:
                v = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(v.to(p.dtype))
