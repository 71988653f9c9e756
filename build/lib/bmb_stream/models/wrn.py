"""WRN-28-2 as used by FixMatch-family LTSSL code: leaky ReLU 0.1, batch-norm momentum 0.001."""

from __future__ import annotations

import torch
from torch import nn

BN_MOMENTUM = 0.001
LEAK = 0.1


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, activate_before_residual: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, momentum=BN_MOMENTUM)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.act = nn.LeakyReLU(LEAK, inplace=True)
        self.shortcut = None if c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)
        self.activate_before_residual = activate_before_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:  # same width: pre-activation block with an identity shortcut
            return x + self.conv2(self.act(self.bn2(self.conv1(self.act(self.bn1(x))))))
        # widening blocks feed the raw input to both paths, except the network's first block,
        # which activates it first (the FixMatch-family WRN; bn1 goes unused in the others)
        inp = self.act(self.bn1(x)) if self.activate_before_residual else x
        return self.shortcut(inp) + self.conv2(self.act(self.bn2(self.conv1(inp))))


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen: int = 2):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        layers = []
        for g, stride in enumerate((1, 2, 2)):
            for i in range(n):
                layers.append(BasicBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1],
                                         stride if i == 0 else 1, activate_before_residual=(g == 0 and i == 0)))
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(widths[3], momentum=BN_MOMENTUM)
        self.act = nn.LeakyReLU(LEAK, inplace=True)
        self.feature_dim = widths[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.blocks(self.conv(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
