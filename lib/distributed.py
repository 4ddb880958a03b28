"""Several processes as one: BatchNorm over the global batch.

`global_batchnorm(model)`: under DDP, BatchNorm layers normalise over the whole global batch (the
statistics are all-reduced, differentiably), so N ranks train the model one process trains.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn import functional as dist_nn

# torch 2.9+ marks this autograd-aware all-reduce deprecated in favour of _functional_collectives, whose
# all_reduce has no backward; it still works, so keep logs free of one warning per BatchNorm call.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated",
                        category=FutureWarning)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch across ranks.

    Same parameters, buffers and state-dict keys as nn.BatchNorm2d; in eval mode, or outside a process
    group, it is nn.BatchNorm2d. Mean and variance come from two all-reduces (sum and count, then the
    centred sum of squares: no E[x²]−E[x]² cancellation); `torch.distributed.nn` all-reduce is
    differentiable, also twice (gradient-norm training), so gradients equal one process's. Works with
    gloo on CPU and NCCL on GPU (torch's SyncBatchNorm is GPU-only and has no double backward).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return super().forward(x)
        c, dtype = x.shape[1], x.dtype
        xf = x.float()
        count = torch.tensor([xf.numel() / c], device=x.device)
        total = dist_nn.all_reduce(torch.cat([xf.sum((0, 2, 3)), count]))
        n = total[-1]
        mean = total[:c] / n
        centred = xf - mean.view(1, c, 1, 1)
        var = dist_nn.all_reduce((centred * centred).sum((0, 2, 3))) / n
        out = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        return out.to(dtype)


def global_batchnorm(model: nn.Module) -> nn.Module:
    """`model` with every BatchNorm2d replaced, in place, by a GlobalBatchNorm2d carrying its state."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats, device=child.weight.device if child.affine else None)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(model, name, new)
        else:
            global_batchnorm(child)
    return model
