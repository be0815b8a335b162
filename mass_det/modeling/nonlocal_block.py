"""Non-local block (embedded dot product), Wang et al., "Non-local Neural Networks", CVPR 2018.

Paper §2.1.4, eqs. (3)-(4)::

    v_i = 1/C(u) * sum_j f(u_i, u_j) g(u_j),     f(u_i, u_j) = theta(u_i)^T phi(u_j),   C(u) = N

with theta, phi, g 1x1 convolutions to ``inter_channels`` and N the number of positions j. With
sub-sampling (``subsample=True``, the default, ``MODEL.NONLOCAL.SUBSAMPLE``) phi and g are 2x2
max-pooled, so the sum runs over the M pooled positions j (M = ceil(H/2) * ceil(W/2), about N / 4)
and C(u) = M, the number of terms summed. Either way the affinity is divided by the length of its
phi axis, as in the reference implementations (``f / f.size(-1)``); the output keeps all N positions
i. The result is projected back to the input width by a 1x1 convolution followed by a normalisation
layer whose scale (gamma) starts at zero, so a new block is an identity mapping (``z = W v + u``)
and pre-trained weights of the surrounding network keep their meaning when the block is added.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, get_norm
from torch import nn


class NonLocalBlock2D(CNNBlockBase):
    """Embedded-dot-product non-local block with a residual connection.

    Input and output: (B, C, H, W) float feature maps, same shape (stride 1).
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        *,
        subsample: bool = True,
        norm: str = "GN",
    ):
        """
        Args:
            in_channels: C of the feature map.
            inter_channels: width of theta/phi/g; C // 2 when None (as in Wang et al.).
            subsample: max-pool phi and g by 2x2, which divides the cost of the affinity matrix by 4
                (Wang et al. §3.3); theta keeps every position, so the output is full resolution.
            norm: detectron2 norm name for the output projection ("GN", "BN", "SyncBN", ...). It must
                be trainable: its zero-initialised gamma is what lets the block leave the identity.
        """
        super().__init__(in_channels, in_channels, stride=1)
        if norm in ("FrozenBN", "", None):
            raise ValueError(
                "a non-local block needs a trainable output norm (its zero-initialised gamma would "
                f"otherwise keep it an identity forever), got norm={norm!r}"
            )
        inter = inter_channels or max(in_channels // 2, 1)
        self.inter_channels = inter
        self.subsample = subsample
        self.theta = nn.Conv2d(in_channels, inter, kernel_size=1)
        self.phi = nn.Conv2d(in_channels, inter, kernel_size=1)
        self.g = nn.Conv2d(in_channels, inter, kernel_size=1)
        self.out = nn.Conv2d(inter, in_channels, kernel_size=1, bias=False)
        self.out_norm = get_norm(norm, in_channels)
        for conv in (self.theta, self.phi, self.g, self.out):
            nn.init.normal_(conv.weight, std=0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.out_norm.weight)  # identity at init
        nn.init.zeros_(self.out_norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2)  # (B, C', N)
        phi, g = self.phi(x), self.g(x)
        if self.subsample and min(h, w) > 1:
            phi = F.max_pool2d(phi, kernel_size=2, ceil_mode=True)
            g = F.max_pool2d(g, kernel_size=2, ceil_mode=True)
        phi, g = phi.flatten(2), g.flatten(2)  # (B, C', M), M = N or about N / 4
        # f = theta^T phi / C(u), C(u) the number of positions j summed over: M (N without
        # sub-sampling, ceil(H/2) * ceil(W/2) with the 2x2 max-pool on phi and g)
        affinity = torch.bmm(theta.transpose(1, 2), phi) / phi.shape[-1]  # (B, N, M)
        v = torch.bmm(affinity, g.transpose(1, 2))  # (B, N, C')
        v = v.transpose(1, 2).reshape(b, self.inter_channels, h, w)
        return x + self.out_norm(self.out(v))
