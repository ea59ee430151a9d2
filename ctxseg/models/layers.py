"""Small building blocks shared by heads, named like mmseg's so converters stay simple tables."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, size, align_corners: bool = False, mode: str = "bilinear") -> torch.Tensor:
    """mmseg's `resize`: a plain interpolate to an explicit size (never a scale factor)."""
    if torch.jit.is_tracing():  # ONNX export: keep traced sizes symbolic so --dynamic graphs follow the input
        return F.interpolate(
            x, size=size, mode=mode, align_corners=align_corners if mode in ("bilinear", "bicubic") else None
        )
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(
        x, size=size, mode=mode, align_corners=align_corners if mode in ("bilinear", "bicubic") else None
    )


class ConvModule(nn.Sequential):
    """conv -> BN -> ReLU with mmseg's state-dict names (`conv.weight`, `bn.*`); no conv bias before BN.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        kernel_size: convolution kernel size.
        stride: convolution stride.
        padding: zero padding on each side, in pixels.
        dilation: convolution dilation.
        groups: convolution groups (`in_ch` for a depthwise convolution).
        norm: add a BatchNorm2d (`bn`); the convolution then has no bias.
        act: add an in-place ReLU (`activate`).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        norm: bool = True,
        act: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, groups, bias=not norm)
        if norm:
            self.bn = nn.BatchNorm2d(out_ch)
        if act:
            self.activate = nn.ReLU(inplace=True)


class DepthwiseSeparableConvModule(nn.Sequential):
    """mmcv's depthwise-separable ConvModule: depthwise 3x3 (BN, ReLU) then pointwise 1x1 (BN, ReLU).

    Args:
        in_ch: input channels (also the depthwise convolution's groups).
        out_ch: output channels of the pointwise convolution.
        kernel_size: kernel size of the depthwise convolution.
        padding: zero padding of the depthwise convolution.
        dilation: dilation of the depthwise convolution.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, padding: int = 1, dilation: int = 1):
        super().__init__()
        self.depthwise_conv = ConvModule(in_ch, in_ch, kernel_size, padding=padding, dilation=dilation, groups=in_ch)
        self.pointwise_conv = ConvModule(in_ch, out_ch, 1)


# --------------------------------------------------------------------------------------------
# Inference fast path: BatchNorm folded into the convolution before it, ReLU (and a residual add)
# fused into the convolution call. Same function up to float rounding; used by
# ctxseg.engine.inference on eval-mode copies of a model, never on the model being trained.
# --------------------------------------------------------------------------------------------


def _mkldnn_pointwise():
    """oneDNN's fused conv(+add)(+ReLU) op on CPU (what inductor emits), or None where absent."""
    try:
        return torch.ops.mkldnn._convolution_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


def foldable(bn: nn.Module) -> bool:
    # exact types: subclasses (timm's BatchNormAct2d) do more than normalise
    return (
        type(bn) in (nn.BatchNorm2d, nn.SyncBatchNorm)
        and not bn.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
    )


class FusedConv2d(nn.Module):
    """conv -> BN (folded into weight/bias) [-> + residual] [-> ReLU] in one call.

    On CPU float32 the fused oneDNN op computes it in one pass over the output (no separate BN,
    add or ReLU passes, each of which reads and writes the whole map and synchronises the
    threads); elsewhere it is F.conv2d followed by the in-place add/ReLU.

    Args:
        conv: the convolution to fuse; its weights are copied (frozen), the module itself is not kept.
        bn: the BatchNorm that follows it (eval statistics are folded in); None: no norm.
        relu: apply ReLU after the (optional) residual add.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.Module | None = None, relu: bool = False):
        super().__init__()
        weight, bias = conv.weight.detach(), conv.bias.detach() if conv.bias is not None else None
        if bn is not None:
            weight, bias = torch.nn.utils.fusion.fuse_conv_bn_weights(
                weight, bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
            )
            weight, bias = weight.detach(), bias.detach()
        if bias is None:
            bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.relu = relu
        self.pointwise = (
            _mkldnn_pointwise() if conv.padding_mode == "zeros" and isinstance(conv.padding, tuple) else None
        )

    def _fast(self, x: torch.Tensor) -> bool:
        return (
            self.pointwise is not None
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not torch.jit.is_tracing()
            and not x.requires_grad
        )

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self._fast(x):
            args = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
            if residual is not None:  # the op wants the residual in the output's layout (x's)
                fmt = (
                    torch.channels_last
                    if x.is_contiguous(memory_format=torch.channels_last)
                    else torch.contiguous_format
                )
                return self.pointwise.binary(
                    x,
                    residual.contiguous(memory_format=fmt),
                    self.weight,
                    self.bias,
                    *args,
                    "add",
                    None,
                    "relu" if self.relu else None,
                    [None],
                    "",
                )
            return self.pointwise(x, self.weight, self.bias, *args, "relu" if self.relu else "none", [None], "")
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if residual is not None:
            y = y + residual
        return F.relu(y, inplace=True) if self.relu else y


def fuse_for_inference(module: nn.Module) -> nn.Module:
    """In place, on an eval-mode module: fold every BatchNorm that directly follows a Conv2d into
    it, and fuse a ReLU that directly follows the BN. Patterns: consecutive children of a
    Sequential (ConvModule, conv-BN-ReLU stacks), `convK`/`bnK` attribute pairs (ResNet/HRNet
    blocks), and modules that define their own `fuse_for_inference()` (blocks whose residual add
    + ReLU can be fused too). The folded BN becomes nn.Identity, so forward code stays valid.
    Returns the module."""
    if callable(getattr(type(module), "fuse_for_inference", None)):
        module.fuse_for_inference()  # first: it knows which of its children may be fused how
    for child in list(module.children()):
        fuse_for_inference(child)
    if getattr(type(module), "fuse_for_inference", None) is not None:
        return module
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        names = list(module._modules)
        i = 0
        while i < len(names) - 1:
            conv, bn = module._modules[names[i]], module._modules[names[i + 1]]
            if type(conv) is nn.Conv2d and foldable(bn):
                relu = i + 2 < len(names) and type(module._modules[names[i + 2]]) is nn.ReLU
                setattr(module, names[i], FusedConv2d(conv, bn, relu))
                setattr(module, names[i + 1], nn.Identity())
                if relu:
                    setattr(module, names[i + 2], nn.Identity())
                i += 3 if relu else 2
            else:
                i += 1
        return module
    for name, conv in list(module._modules.items()):
        if type(conv) is nn.Conv2d and name.startswith("conv"):
            bn_name = "bn" + name[4:]
            bn = module._modules.get(bn_name)
            if foldable(bn):
                setattr(module, name, FusedConv2d(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return module
