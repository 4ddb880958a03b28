"""pytorch-fid's FID InceptionV3, built from a given state dict instead of its constructor's download.

Imported by lib.fid only when Inception is asked for: pytorch-fid imports torchvision (and torch._dynamo with
it), about 4 s on a 2-core CPU that the domain feature spaces of `default` never need.
"""

from __future__ import annotations

from pytorch_fid import inception as pfi
from torch import nn

# pytorch-fid's block layout (InceptionV3.__init__): the Inception3 modules of each output block
BLOCKS = (("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool"),
          ("Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool"),
          ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
          ("Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"))


class FIDInception(pfi.InceptionV3):
    """pytorch-fid's `InceptionV3` (its forward: bilinear resize to 299², scaling to [-1, 1], the blocks)
    built from a given state dict instead of its constructor's download. Returns block outputs (N,d,h,w)."""

    def __init__(self, output_blocks, state: dict):
        nn.Module.__init__(self)
        self.resize_input, self.normalize_input = True, True
        self.output_blocks = sorted(output_blocks)
        self.last_needed_block = max(output_blocks)
        net = architecture()
        net.load_state_dict(state)
        pools = {"maxpool": lambda: nn.MaxPool2d(kernel_size=3, stride=2),
                 "avgpool": lambda: nn.AdaptiveAvgPool2d(output_size=(1, 1))}
        self.blocks = nn.ModuleList(
            nn.Sequential(*[pools[n]() if n in pools else getattr(net, n) for n in names])
            for names in BLOCKS[:self.last_needed_block + 1])
        self.requires_grad_(False)


def architecture() -> nn.Module:
    """pytorch-fid's `fid_inception_v3()` network with uninitialised weights (no download)."""
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, block, args in (("Mixed_5b", pfi.FIDInceptionA, (192, 32)), ("Mixed_5c", pfi.FIDInceptionA, (256, 64)),
                              ("Mixed_5d", pfi.FIDInceptionA, (288, 64)), ("Mixed_6b", pfi.FIDInceptionC, (768, 128)),
                              ("Mixed_6c", pfi.FIDInceptionC, (768, 160)), ("Mixed_6d", pfi.FIDInceptionC, (768, 160)),
                              ("Mixed_6e", pfi.FIDInceptionC, (768, 192)), ("Mixed_7b", pfi.FIDInceptionE_1, (1280,)),
                              ("Mixed_7c", pfi.FIDInceptionE_2, (2048,))):
        setattr(net, name, block(*args))
    return net
