"""Seeded benchmark inputs identical to ../shared/perf/ref_bench.py's (the official side), so that
ctxseg's side of a side-by-side comparison runs on exactly the same tensors.

The functions draw from a torch.Generator in the same order and with the same calls as ref_bench,
which is what makes the tensors identical (tests/test_bench_cases.py checks them against
ref_bench when ../shared/perf is present).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CONTRAST_IGNORE = -1  # ContrastiveSeg: dataset 255 -> -1
SSSEG_IGNORE = -100  # sssegmentation's update_cfg.ignore_index
MM_IGNORE = 255  # mmseg / CAC fork
MMSEG_MEAN = (123.675, 116.28, 103.53)  # RGB, mmseg's SegDataPreProcessor for Cityscapes
MMSEG_STD = (58.395, 57.12, 57.375)


def voronoi_labels(
    gen: torch.Generator, b: int, h: int, w: int, n_cells: int, num_classes: int, ignore_value: int, ignore_prob: float
) -> torch.Tensor:
    """Blob label maps [B, H, W]: n_cells anisotropic Voronoi cells per image, each a uniform random
    class, or ignore_value with probability ignore_prob."""
    yy = torch.arange(h, dtype=torch.float32)[:, None]
    xx = torch.arange(w, dtype=torch.float32)[None, :]
    out = torch.empty(b, h, w, dtype=torch.long)
    for i in range(b):
        cy = torch.rand(n_cells, generator=gen) * h
        cx = torch.rand(n_cells, generator=gen) * w
        sy = 0.5 + 1.5 * torch.rand(n_cells, generator=gen)
        sx = 0.5 + 1.5 * torch.rand(n_cells, generator=gen)
        cls = torch.randint(0, num_classes, (n_cells,), generator=gen)
        cls[torch.rand(n_cells, generator=gen) < ignore_prob] = ignore_value
        best = torch.full((h, w), float("inf"))
        nearest = torch.zeros((h, w), dtype=torch.long)
        for k in range(n_cells):
            dist = ((yy - cy[k]) * sy[k]) ** 2 + ((xx - cx[k]) * sx[k]) ** 2
            closer = dist < best
            best = torch.where(closer, dist, best)
            nearest[closer] = k
        out[i] = cls[nearest]
    return out


def blob_errors(
    gen: torch.Generator, target: torch.Tensor, num_classes: int, ignore_value: int, error_frac: float, n_cells: int
) -> torch.Tensor:
    """A 'prediction' equal to `target` except in random blobs (~error_frac of the area) of a random
    class; ignore pixels take their blob's class."""
    b, h, w = target.shape
    part = voronoi_labels(gen, b, h, w, n_cells, 1 << 30, -1, 0.0)
    ids, inv = torch.unique(part, return_inverse=True)
    wrong = torch.rand(ids.numel(), generator=gen) < error_frac
    cls = torch.randint(0, num_classes, (ids.numel(),), generator=gen)
    pred = target.clone()
    mask = wrong[inv]
    pred[mask] = cls[inv][mask]
    ign = target == ignore_value
    pred[ign] = cls[inv][ign]
    return pred


def contrast_inputs(with_queue: bool = False) -> dict:
    """ref_bench group 'contrast': embed [8, 256, 128, 256] (unit along dim 1), labels [8, 512, 1024]
    (32 cells, 19 classes, 8 % ignore -1), predict [8, 128, 256]; queue [19, 2 x 5000, 256]."""
    b, d, h, w, H, W, c = 8, 256, 128, 256, 512, 1024, 19
    gen = torch.Generator().manual_seed(1234)
    embed = F.normalize(torch.randn(b, d, h, w, generator=gen), p=2, dim=1)
    labels = voronoi_labels(gen, b, H, W, 32, c, CONTRAST_IGNORE, 0.08)
    down = F.interpolate(labels[:, None].float(), (h, w), mode="nearest")[:, 0].long()
    predict = blob_errors(gen, down, c, CONTRAST_IGNORE, 0.2, 400)
    out = {"embed": embed, "labels": labels, "predict": predict, "queue": None}
    if with_queue:
        qgen = torch.Generator().manual_seed(4321)
        seg_q = F.normalize(torch.randn(c, 5000, d, generator=qgen), p=2, dim=2)
        pix_q = F.normalize(torch.randn(c, 5000, d, generator=qgen), p=2, dim=2)
        out["queue"] = torch.cat((seg_q, pix_q), dim=1)
    return out


# official configs (tfzhou/ContrastiveSeg configs/cityscapes/H_48_D_4.json / H_48_D_4_MEM.json)
CONTRAST_SETTINGS = {
    False: {"temperature": 0.1, "base_temperature": 0.07, "max_samples": 1024, "max_views": 100},
    True: {"temperature": 0.07, "base_temperature": 0.07, "max_samples": 1024, "max_views": 1},
}

MCIBI_LR = 0.005  # ref_bench: a poly-decayed learning rate mid-schedule
MCIBI_MOMENTUM = 0.9 / 0.01 * MCIBI_LR  # base_momentum / base_lr * lr (adjust_by_learning_rate)


def mcibi_inputs() -> dict:
    """ref_bench group 'mcibi' (update cases): memory [150, 1, 512] = rand + 0.05, segmentation
    [2, 512, 512] (16 cells, 150 classes, 8 % ignore -100), features relu(randn) [2, 512, 512, 512]
    and memory_input relu(randn) [2, 512, 64, 64], drawn in ref_bench's order."""
    k, c, b, h, w = 150, 512, 2, 512, 512
    gen = torch.Generator().manual_seed(555)
    mem0 = (torch.rand(k, 1, c, generator=gen) + 0.05).contiguous()
    seg = voronoi_labels(gen, b, h, w, 16, k, SSSEG_IGNORE, 0.08)
    feats = torch.randn(b, c, h, w, generator=gen).relu_()
    small = torch.randn(b, c, h // 8, w // 8, generator=gen).relu_()
    return {"memory": mem0, "segmentation": seg, "features": feats, "memory_input": small}


def randomise_bn(module: torch.nn.Module, gen: torch.Generator) -> None:
    """BN running stats as ref_bench sets them (mean 0.1 randn, var rand + 0.5), in module order."""
    with torch.no_grad():
        for mod in module.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=gen) + 0.5)


def cac_inputs(head: torch.nn.Module) -> dict:
    """ref_bench group 'cac': FCN head (in 2048, 512 ch, 150 classes) BN stats randomised, inputs
    relu(randn) [4, 2048, 64, 64], labels [4, 512, 512] (16 cells, 150 classes, 8 % ignore 255)."""
    gen = torch.Generator().manual_seed(777)
    randomise_bn(head, gen)
    x = torch.randn(4, 2048, 64, 64, generator=gen).relu_()
    gt = voronoi_labels(gen, 4, 512, 512, 16, 150, MM_IGNORE, 0.08)
    return {"inputs": x, "labels": gt}


# the mmseg group (OCRNet-HR18): ref_bench's `_seg_batch`
def smooth_image_u8(gen: torch.Generator, shape: tuple[int, int, int, int]) -> torch.Tensor:
    n, c, h, w = shape
    low = torch.rand((n, c, max(h // 16, 2), max(w // 16, 2)), generator=gen)
    low = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    img = (0.7 * low + 0.3 * torch.rand((n, c, h, w), generator=gen)) * 255.0
    return img.round().clamp(0, 255).to(torch.uint8)


def seg_batch(
    gen: torch.Generator, batch: int, height: int, width: int, num_classes: int = 19, ignore_value: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [B,3,H,W] as mmseg receives them (BGR), labels [B,H,W])."""
    images = smooth_image_u8(gen, (batch, 3, height, width))
    labels = voronoi_labels(gen, batch, height, width, 32, num_classes, ignore_value, 0.08)
    return images, labels


def mmseg_normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """mmseg's data preprocessor: BGR -> RGB, float, (x - mean) / std."""
    x = images_u8[:, [2, 1, 0]].float()
    mean = torch.tensor(MMSEG_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(MMSEG_STD).view(1, 3, 1, 1)
    return (x - mean) / std
