"""Cross-entropy of bilinearly upsampled logits without the label-size logit map.

    upsampled_ce_sum(logits [B, n, h, w], target [B, H, W]) ==
        F.cross_entropy(F.interpolate(logits, (H, W), mode="bilinear"), target,
                        ignore_index=..., reduction="sum")          (up to float rounding)

The straightforward form writes the [B, n, H, W] upsampled map (ADE20K, batch 4: 150 x 512 x 512
x 4 = 630 MB), its log-softmax, a zero-filled gradient of the same size, the log-softmax gradient,
and runs the upsampling's backward over it: about a dozen passes through main memory, which is
where a CAC training step spent its extra time (three such terms instead of one).

Here bilinear upsampling is written as two small interpolation matrices, up(X) = Ry . X . Rx^T
(Ry [H, h], Rx [W, w], taken from torch's own 1-D linear interpolation of an identity, so the
weights are torch's), and the label-size map is only ever formed a few output rows at a time
(a cache-sized block):
  forward   X_w = X . Rx^T once ([h, B, n, W], 1/8 of the label-size map at stride 8); per block
            U = Ry[rows] . X_w (one GEMM), per-pixel log-sum-exp over classes, minus the target
            logit; only the per-pixel log-sum-exp [B, H, W] is kept for the backward.
  backward  per block U again, softmax = exp(U - lse), minus one at the target, times the pixel
            weight, and Ry[rows]^T . block accumulated into a [h, B, n, W] buffer (one GEMM);
            finally . Rx gives the gradient at feature resolution.
The values are the straightforward ones up to float rounding (the sums run in another order);
tests/test_upsampled_ce.py compares loss and gradients with F.interpolate + F.cross_entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# label-size block of about this many bytes: in the (shared) L3 cache of a CPU, and few enough blocks that
# per-op thread wake-ups do not dominate on a loaded machine (4 MB blocks were slower than the
# straightforward form at load 8 on 2 threads, 32 MB twice as fast); a few big blocks on GPUs
BLOCK_BYTES = {"cpu": 32 << 20}
DEFAULT_BLOCK_BYTES = 256 << 20


def interpolation_matrix(size_in: int, size_out: int, align_corners: bool, dtype, device) -> torch.Tensor:
    """[size_out, size_in] matrix of torch's 1-D linear interpolation (what bilinear does per axis)."""
    eye = torch.eye(size_in, dtype=dtype, device=device).unsqueeze(0)  # 1, channel i, position
    if size_in == size_out:
        return eye[0]
    return F.interpolate(eye, size=size_out, mode="linear", align_corners=align_corners)[0].t().contiguous()


def _block_rows(height: int, row_numel: int, element_size: int, device: torch.device) -> int:
    budget = BLOCK_BYTES.get(device.type, DEFAULT_BLOCK_BYTES)
    return max(1, min(height, budget // max(1, row_numel * element_size)))


def _taps(ry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two input rows each output row of a linear-interpolation matrix reads, and their weights."""
    nz = ry != 0
    k0 = torch.where(
        nz.any(dim=1), nz.float().argmax(dim=1), torch.zeros(ry.shape[0], dtype=torch.long, device=ry.device)
    )
    k1 = (k0 + 1).clamp(max=ry.shape[1] - 1)
    w0 = ry.gather(1, k0[:, None]).squeeze(1)
    w1 = torch.where(k1 != k0, ry.gather(1, k1[:, None]).squeeze(1), torch.zeros_like(w0))
    return k0, k1, w0, w1


def _row_blocks(k0: torch.Tensor, k1: torch.Tensor, rows: int):
    """(r0, r1, j0, j1): output rows r0:r1 read only input rows j0:j1 (the matrix is banded)."""
    first, last = k0.tolist(), k1.tolist()
    for r0 in range(0, len(first), rows):
        r1 = min(r0 + rows, len(first))
        yield r0, r1, min(first[r0:r1]), max(last[r0:r1]) + 1


class _UpsampledCESum(torch.autograd.Function):
    """Sum of the per-pixel CE over the valid label pixels; see the module docstring."""

    @staticmethod
    def forward(ctx, logits, target, align_corners, ignore_index, class_weight=None, ohem=None):
        # float32 throughout, also under autocast (bf16 / fp16 training): autocast would run the
        # interpolation matmuls in low precision and leave xw in bf16 for the backward's scatter
        with torch.autocast(device_type=logits.device.type, enabled=False):
            total, weight_sum = _UpsampledCESum._forward(
                ctx, logits, target, align_corners, ignore_index, class_weight, ohem
            )
        ctx.mark_non_differentiable(weight_sum)
        return total, weight_sum

    @staticmethod
    def _forward(ctx, logits, target, align_corners, ignore_index, class_weight, ohem):
        b, n, h, w = logits.shape
        height, width = target.shape[-2:]
        x = logits.detach().float()
        # CE is invariant to a per-pixel shift of the logits, and upsampling is linear, so
        # subtracting each feature pixel's max shifts every label pixel by the upsampled max:
        # the same CE, and the upsampled logits are <= 0, so exp() needs no max pass per block
        x = x - x.amax(dim=1, keepdim=True)
        ry = interpolation_matrix(h, height, align_corners, x.dtype, x.device)  # H, h
        rx = interpolation_matrix(w, width, align_corners, x.dtype, x.device)  # W, w
        # rows outermost: a block of label rows is one contiguous [rows, B*n*W] slab
        xw = (x.permute(2, 0, 1, 3).reshape(-1, w) @ rx.t()).reshape(h, b * n * width)
        labels = target.permute(1, 0, 2)  # H, B, W
        valid = (labels != ignore_index) & (labels >= 0) & (labels < n)
        k0, k1, w0, w1 = _taps(ry)
        # flat index of (input row, b, class, column) in xw for the target class of every label pixel
        cls = torch.where(valid, labels, torch.zeros_like(labels))
        base = (torch.arange(b, device=x.device).view(1, b, 1) * n + cls) * width + torch.arange(width, device=x.device)
        plane = b * n * width
        idx0, idx1 = base + k0.view(-1, 1, 1) * plane, base + k1.view(-1, 1, 1) * plane
        flat = xw.view(-1)
        picked = flat.take(idx0) * w0.view(-1, 1, 1) + flat.take(idx1) * w1.view(-1, 1, 1)
        sumexp = torch.empty(height, b, width, dtype=x.dtype, device=x.device)
        rows = _block_rows(height, plane, x.element_size(), x.device)
        for r0, r1, j0, j1 in _row_blocks(k0, k1, rows):
            u = (ry[r0:r1, j0:j1] @ xw[j0:j1]).view(r1 - r0, b, n, width)
            torch.sum(u.exp_(), dim=2, out=sumexp[r0:r1])
        lse = sumexp.log_()
        if bool(((lse < -40.0) & valid).any()):  # far below the max: exact log-sum-exp there (rare)
            for r in torch.nonzero(((lse < -40.0) & valid).any(dim=(1, 2))).flatten().tolist():
                j0, j1 = int(k0[r]), int(k1[r]) + 1
                u = (ry[r : r + 1, j0:j1] @ xw[j0:j1]).view(1, b, n, width)
                lse[r : r + 1] = torch.logsumexp(u, dim=2)
        ce = lse - picked  # per-pixel CE, H, B, W
        pw = valid.to(x.dtype)  # per-pixel weight: 0 on ignored pixels
        if ohem is not None:  # mmseg's OHEMPixelSampler on the true-class probability exp(-ce)
            pw = pw * _ohem_keep(ce, valid, b, *ohem)
        if class_weight is not None:
            pw = pw * class_weight.to(x.dtype)[cls]
        total = (ce * pw).sum() if (ohem is not None or class_weight is not None) else (ce * valid).sum()
        weight_sum = pw.sum()
        # backward: pw x softmax = exp(u - (lse - log pw)); 0 (exp(-inf)) where pw = 0 (ignored, dropped)
        scale = None
        if class_weight is None and ohem is None:
            lse = lse.masked_fill_(~valid, float("inf"))
        elif bool((pw >= 0).all()):
            lse = torch.where(pw > 0, lse - pw.log(), torch.full_like(lse, float("inf")))
        else:  # negative class weights: multiply instead
            scale = pw
        ctx.save_for_backward(xw, ry, rx, lse, idx0, idx1, w0, w1, pw, scale)
        ctx.meta = (b, n, h, w, logits.dtype, rows)
        return total, weight_sum

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor, _grad_weight_sum=None):
        with torch.autocast(device_type=grad_total.device.type, enabled=False):
            return _UpsampledCESum._backward(ctx, grad_total) + (None, None)

    @staticmethod
    def _backward(ctx, grad_total: torch.Tensor):
        xw, ry, rx, lse, idx0, idx1, w0, w1, v, scale = ctx.saved_tensors
        b, n, h, w, dtype, rows = ctx.meta
        width = lse.shape[2]
        # Ry^T . (softmax - onehot): the one-hot part is a scatter of the two row taps
        acc = torch.zeros_like(xw)
        flat = acc.view(-1)
        flat.scatter_add_(0, idx0.reshape(-1), (v * -w0.view(-1, 1, 1)).reshape(-1))  # ignored pixels add 0
        flat.scatter_add_(0, idx1.reshape(-1), (v * -w1.view(-1, 1, 1)).reshape(-1))
        k0, k1, _, _ = _taps(ry)
        for r0, r1, j0, j1 in _row_blocks(k0, k1, rows):
            u = (ry[r0:r1, j0:j1] @ xw[j0:j1]).view(r1 - r0, b, n, width)
            u.sub_(lse[r0:r1].unsqueeze(2)).exp_()
            if scale is not None:
                u.mul_(scale[r0:r1].unsqueeze(2))
            acc[j0:j1].addmm_(ry[r0:r1, j0:j1].t(), u.view(r1 - r0, -1))
        grad = (acc.view(-1, width) @ rx).view(h, b, n, w).permute(1, 2, 0, 3)
        grad = grad * grad_total.to(grad.dtype)
        return grad.to(dtype).contiguous(), None, None, None


def upsampled_ce_sum(
    logits: torch.Tensor, target: torch.Tensor, align_corners: bool = False, ignore_index: int = 255
) -> torch.Tensor:
    """Sum over the non-ignored label pixels of the CE of `logits` [B, n, h, w] bilinearly resized
    to the label size [B, H, W] (float32 scalar). Labels outside [0, n) other than ignore_index
    count as ignored (torch would raise)."""
    if target.dim() == 4:
        target = target.squeeze(1)
    return _UpsampledCESum.apply(logits, target.long(), bool(align_corners), int(ignore_index))[0]


def upsampled_ce_weighted(
    logits: torch.Tensor,
    target: torch.Tensor,
    align_corners: bool = False,
    ignore_index: int = 255,
    class_weight: torch.Tensor | None = None,
    ohem: tuple[float, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, weight sum) over the label pixels of w_pixel x CE of `logits` bilinearly resized to the
    label size, w_pixel = class_weight[label] (1 without) x the OHEM keep mask (1 without), 0 on
    ignored pixels. ohem = (thresh, min_kept): mmseg's OHEMPixelSampler on the upsampled logits'
    true-class probability, as ctxseg.losses.cross_entropy.ohem_weights. The weight sum (no
    gradient) is the denominator of a weighted mean."""
    if target.dim() == 4:
        target = target.squeeze(1)
    cw = None if class_weight is None else class_weight.detach()
    return _UpsampledCESum.apply(
        logits, target.long(), bool(align_corners), int(ignore_index), cw, None if ohem is None else tuple(ohem)
    )


def _ohem_keep(ce: torch.Tensor, valid: torch.Tensor, batch: int, thresh: float, min_kept: int) -> torch.Tensor:
    """ohem_weights' keep mask from the per-pixel CE (true-class probability exp(-ce)), any layout."""
    keep = torch.zeros_like(ce)
    num_valid = int(valid.sum())
    if num_valid == 0:
        return keep
    p = torch.exp(-ce)
    k = min(int(min_kept) * batch, num_valid - 1)
    kth = p[valid].kthvalue(k + 1).values  # sorted(p)[k]
    threshold = max(float(kth), float(thresh))
    keep[valid & (p < threshold)] = 1.0
    return keep
