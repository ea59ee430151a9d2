"""Per-class statistics of the MCIBI memory update without per-class work or upsampled maps.

ssseg's `FeaturesMemory.update` (cosine strategy) needs, per class k with memory row m:
    N_k   = number of pixels of class k                            (label resolution)
    sum_k = sum_i f_i                                              (init / 'mean' strategy)
    num_k = sum_i w_i f_i,  den_k = sum_i w_i,  w_i = 1 - cos(f_i, m)
where f_i are the features upsampled (bilinear) to the label size. Both sums are linear in the
features once the per-pixel scalars w_i are known, so they are formed as
    num = A @ G^T,   A[k, j] = sum_{i of class k} w_i * W_ij
with G the features at THEIR resolution and W_ij the bilinear weight of source pixel j in label
pixel i (4 non-zeros per i). The per-pixel scalars need f_i . m (linear: the 4 corner values of
m . G) and |f_i| (a quadratic form of the 4 corner vectors: their 2x2-neighbourhood Gram values,
computed once at feature resolution). Nothing of size labels x channels is ever built; the cost
is one matmul over the features per image plus O(label pixels) scalar work.

Features already at label resolution (W = identity) are taken in chunks of consecutive pixels of
the channel-first map (no permuted copy): per chunk the norms, one matmul with the memory rows of
the classes present IN THE CHUNK (a few, as neighbouring pixels share labels) and one matmul
with the one-non-zero-per-column weight matrix (_statistics_at_label_size).

Values equal the straightforward computation up to float rounding (tests/test_mcibi_update.py
compares with a per-class loop over the upsampled map).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NORM_EPS = 1e-8  # F.cosine_similarity's eps, applied to each norm
UNIT_EPS = 1e-12  # F.normalize's eps (slot assignment)


@dataclass
class ClassStats:
    """Per-class statistics of the (virtually upsampled) features that the memory update needs.

    Args:
        count: [K] pixels per class (float64).
        sums: [K, C] per-class feature sums (rows not requested are zero).
        num: [K*S, C] sum of w_i f_i per (class, slot), w_i = 1 - cos(f_i, slot) for the pixels
            assigned to the slot.
        den: [K*S] sum of w_i per (class, slot).
    """

    count: torch.Tensor  # [K] pixels per class (float64)
    sums: torch.Tensor  # [K, C] per-class feature sums (rows not requested are zero)
    num: torch.Tensor  # [K*S, C] sum of w_i f_i per (class, slot)
    den: torch.Tensor  # [K*S] sum of w_i


def source_taps(out_size: int, in_size: int, align_corners: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """F.interpolate's bilinear source rule along one axis: (first tap index [out], weight of the
    second tap [out]); the second tap is index + 1 on a map padded by one replicated row."""
    dst = torch.arange(out_size, dtype=torch.float64, device=device)
    if align_corners:
        src = dst * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
    else:
        src = ((dst + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    lam = (src - i0).clamp(0, 1)
    return i0, lam


def _valid_labels(y: torch.Tensor, k: int, ignore_index: int) -> torch.Tensor:
    return (y != ignore_index) & (y >= 0) & (y < k)


@torch.no_grad()
def class_statistics(
    features: torch.Tensor,
    labels: torch.Tensor,
    memory: torch.Tensor,
    weighted: torch.Tensor,
    summed: torch.Tensor,
    ignore_index: int,
    align_corners: bool = False,
    max_elements: int = 1 << 24,
) -> ClassStats:
    """Statistics of `features` [B, C, h, w] (any resolution; bilinearly upsampled to the labels'
    [B, H, W] implicitly) per class of `memory` [K, S, C] (float32).

    weighted [K] bool: classes whose cosine-weighted sums are wanted (slot of each pixel = highest
    cosine similarity among the class's S slots); summed [K] bool: classes whose plain sums are
    wanted (at label resolution a class may not be both; update_memory never asks for both).
    Labels equal to `ignore_index` or outside [0, K) are skipped.
    """
    k, s, c = memory.shape
    dev = features.device
    b, _, h, w = features.shape
    H, W = labels.shape[-2:]
    # float32 (the memory of a float32 or mixed-precision run), float64 for a float64 run
    work = torch.promote_types(torch.promote_types(memory.dtype, features.dtype), torch.float32)
    mem_rows = memory.reshape(k * s, c).to(work)
    mem_norm = mem_rows.norm(dim=1)
    if (h, w) == (H, W):
        if bool((weighted & summed).any()):
            raise ValueError("class_statistics at label resolution: a class is either weighted or summed")
        return _statistics_at_label_size(
            features, labels, mem_rows, mem_norm, s, weighted, summed, ignore_index, max_elements
        )
    count = torch.zeros(k, dtype=torch.float64, device=dev)
    sums = torch.zeros(k, c, dtype=torch.float64, device=dev)
    num = torch.zeros(k * s, c, dtype=torch.float64, device=dev)
    den = torch.zeros(k * s, dtype=torch.float64, device=dev)
    iy, ly = source_taps(H, h, align_corners, dev)
    ix, lx = source_taps(W, w, align_corners, dev)
    for i in range(b):
        y = labels[i].reshape(-1).long()
        valid = _valid_labels(y, k, ignore_index)
        yv = torch.where(valid, y, 0)
        cnt = torch.bincount(yv[valid], minlength=k).to(torch.float64)
        count += cnt
        present = cnt > 0
        w_cls = (present & weighted).nonzero().squeeze(1)  # classes whose pixels get cosine weights
        s_cls = (present & summed).nonzero().squeeze(1)
        if w_cls.numel() == 0 and s_cls.numel() == 0:
            continue
        # position of each pixel's class in the compact lists (-1: not wanted)
        w_pos = torch.full((k,), -1, dtype=torch.long, device=dev)
        w_pos[w_cls] = torch.arange(w_cls.numel(), device=dev)
        s_pos = torch.full((k,), -1, dtype=torch.long, device=dev)
        s_pos[s_cls] = torch.arange(s_cls.numel(), device=dev)
        pw = torch.where(valid, w_pos[yv], -1)
        ps = torch.where(valid, s_pos[yv], -1)
        rows = (w_cls[:, None] * s + torch.arange(s, device=dev)).reshape(-1)  # memory rows of the wanted classes
        m = mem_rows[rows]  # [Kw*S, C]
        a_num, a_sum, wsum = _stats_upsampled(
            features[i], pw, ps, m, mem_norm[rows], s, s_cls.numel(), (iy, ly, ix, lx)
        )
        num.index_add_(0, rows, a_num)
        den.index_add_(0, rows, wsum)
        sums.index_add_(0, s_cls, a_sum)
    return ClassStats(count, sums, num, den)


# Columns of a [C, N] map handled at once at label resolution (32768 = 64 rows of a 512-wide map,
# typically a few classes). Measured at ADE20K size (512 channels, 150 classes) on 2 shared cores,
# against whole-image matmuls with every class of the image: 1 thread 4096 / 16384 / 32768
# columns 1.8x / 1.7x / 1.7x faster; 2 threads on a loaded machine 4096 columns slower (each
# chunk's large operations are thread synchronisations), 16384 1.0-1.6x, 32768 1.5x, 65536 1.5x.
CHUNK_COLUMNS = 32768


def _statistics_at_label_size(
    features: torch.Tensor,
    labels: torch.Tensor,
    mem_rows: torch.Tensor,
    mem_norm: torch.Tensor,
    s: int,
    weighted: torch.Tensor,
    summed: torch.Tensor,
    ignore_index: int,
    max_elements: int,
) -> ClassStats:
    """Features at label resolution, per image as a channel-first [C, N] view (no permuted copy).

    The pixels are taken in chunks of consecutive columns; a chunk of a segmentation map holds a
    few classes (neighbouring pixels share labels), so per chunk the dot products are a matmul with
    the memory rows of ITS classes only (not all classes of the image: most of that work would be
    thrown away), and the sums a matmul with a [columns, its rows] coefficient matrix (one non-zero
    per column: the pixel's cosine weight, or 1 for plain sums). A class is either weighted or
    summed here (the caller checks), so both kinds share one coefficient matrix: plain sums land in
    slot 0's row and are moved to `sums` at the end. One host synchronisation per image (the
    per-chunk class lists)."""
    k = weighted.numel()
    b, c = features.shape[:2]
    n = labels[0].numel()
    dev = features.device
    cols = max(1, min(CHUNK_COLUMNS, max_elements // c, n))
    n_chunks = -(-n // cols)
    count = torch.zeros(k, dtype=torch.float64, device=dev)
    num = torch.zeros(k * s, c, dtype=torch.float64, device=dev)
    den = torch.zeros(k * s, dtype=torch.float64, device=dev)
    no = torch.zeros(1, dtype=torch.bool, device=dev)
    wanted = torch.cat([weighted | summed, no]).long()  # class k: the sink of skipped pixels
    is_weighted, is_summed = torch.cat([weighted, no]), torch.cat([summed, no])
    any_weighted, any_summed = bool(weighted.any()), bool(summed.any())
    slots = torch.arange(s, device=dev)
    work = mem_rows.dtype
    squares = torch.empty(c, cols, dtype=work, device=dev) if any_weighted else None
    for i in range(b):
        g = features[i].reshape(c, n)
        y = labels[i].reshape(n).long()
        yv = torch.where(_valid_labels(y, k, ignore_index), y, k)
        count += torch.bincount(yv, minlength=k + 1)[:k]
        by_chunk = F.pad(yv, (0, n_chunks * cols - n), value=k).view(n_chunks, cols)
        present = torch.zeros(n_chunks, k + 1, dtype=torch.long, device=dev).scatter_(1, by_chunk, 1) * wanted
        # place of each pixel's class in its chunk's class list (meaningless where not wanted: weight 0)
        local = (present.cumsum(1) - 1).gather(1, by_chunk).view(-1)[:n]
        per_chunk = present.sum(1).tolist()
        rows = (present.nonzero()[:, 1, None] * s + slots).reshape(-1)  # memory rows, chunk after chunk
        m, m_norm = mem_rows[rows], mem_norm[rows]
        pix_w, pix_s = is_weighted[yv], is_summed[yv]
        accs, wsums = [], []
        first = 0
        for j, nc in enumerate(per_chunk):
            if nc == 0:
                continue
            a, e = j * cols, min(n, (j + 1) * cols)
            gc = g[:, a:e].to(work)
            lc = local[a:e].clamp(0, nc - 1)
            r = slice(first * s, (first + nc) * s)
            if any_weighted:
                dots = (m[r] @ gc).view(nc, s, -1)
                per_slot = dots.gather(0, lc.view(1, 1, -1).expand(1, s, -1))[0]
                norms = torch.mul(gc, gc, out=squares[:, : e - a]).sum(0).sqrt_()
                row, wgt = _slot_and_weight(per_slot, norms, torch.where(pix_w[a:e], lc, -1), m_norm[r], s)
                if any_summed:
                    row = torch.where(pix_s[a:e], lc * s, row)
                    wgt = torch.where(pix_s[a:e], 1.0, wgt)
            else:
                row, wgt = lc * s, pix_s[a:e].to(gc.dtype)
            coef = torch.zeros(nc * s, e - a, dtype=work, device=dev).scatter_(0, row.view(1, -1), wgt.view(1, -1))
            accs.append(torch.mm(gc, coef.t()))  # [C, nc*S]
            wsums.append(coef.sum(1))
            first += nc
        if accs:
            num.index_add_(0, rows, torch.cat(accs, 1).t().double())
            den.index_add_(0, rows, torch.cat(wsums).double())
    # plain sums were gathered in slot 0's row of their classes
    by_class = num.view(k, s, c)
    sums = torch.where(summed[:, None], by_class[:, 0], 0.0)
    num = torch.where(weighted.repeat_interleave(s)[:, None], num, 0.0)
    den = torch.where(weighted.repeat_interleave(s), den, 0.0)
    return ClassStats(count, sums, num, den)


def _slot_and_weight(
    per_slot: torch.Tensor, norms: torch.Tensor, pw: torch.Tensor, mem_norm: torch.Tensor, s: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """per_slot [S, n] = m_slot . f of each pixel with the S slots of its own class (pw: the class's
    place in the compact list, -1 where not weighted) -> (compact memory row of each pixel, 0 where
    not weighted; cosine weight 1 - cos, 0 where not weighted)."""
    use = pw >= 0
    cls = pw.clamp(min=0)
    if s == 1:
        slot = torch.zeros_like(cls)
    else:  # ssseg: argmax of normalize(f) . normalize(m_slot); |f| is common to the slots
        unit = per_slot / mem_norm.view(-1, s)[cls].t().clamp_min(UNIT_EPS)
        slot = unit.argmax(dim=0)
    row = cls * s + slot
    dot = per_slot.gather(0, slot.view(1, -1))[0]
    cos = dot / (norms.clamp_min(NORM_EPS) * mem_norm[row].clamp_min(NORM_EPS))
    weight = torch.where(use, 1 - cos, torch.zeros_like(cos))
    return row, weight


def _neighbour_gram(g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Dot products of each feature vector with its right, lower and diagonal neighbours on the map
    padded by one replicated row and column (F.interpolate clamps the second tap at the border)."""
    gp = F.pad(g.unsqueeze(0), (0, 1, 0, 1), mode="replicate")[0]  # [C, h+1, w+1]
    h, w = g.shape[-2:]
    a = gp[:, :h, :w]
    return {
        "nn": (gp * gp).sum(0),  # [h+1, w+1]
        "dx": (gp[:, :, :w] * gp[:, :, 1:]).sum(0),  # (i, j).(i, j+1), [h+1, w]
        "dy": (gp[:, :h] * gp[:, 1:]).sum(0),  # (i, j).(i+1, j), [h, w+1]
        "d1": (a * gp[:, 1:, 1:]).sum(0),  # (i, j).(i+1, j+1)
        "d2": (gp[:, :h, 1:] * gp[:, 1:, :w]).sum(0),  # (i, j+1).(i+1, j)
    }


def _stats_upsampled(
    g: torch.Tensor,
    pw: torch.Tensor,
    ps: torch.Tensor,
    m: torch.Tensor,
    mem_norm: torch.Tensor,
    s: int,
    n_sum: int,
    taps,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features [C, h, w] below label resolution: everything at feature resolution (module docstring)."""
    iy, ly, ix, lx = taps
    c, h, w = g.shape
    dev = g.device
    gd = g.double()  # small: exact enough for the quadratic forms and the sums
    hp, wp = h + 1, w + 1
    wy = (1 - ly, ly)  # [H] (H = label height) weights of rows iy, iy + 1
    wx = (1 - lx, lx)
    # flat index of corner (a, b) of every label pixel on the padded (h+1) x (w+1) grid
    corner = [[(iy + a)[:, None] * wp + (ix + bb)[None, :] for bb in (0, 1)] for a in (0, 1)]
    weight = [[(wy[a][:, None] * wx[bb][None, :]).reshape(-1) for bb in (0, 1)] for a in (0, 1)]
    corner = [[t.reshape(-1) for t in row] for row in corner]
    gpad = F.pad(gd.unsqueeze(0), (0, 1, 0, 1), mode="replicate")[0].reshape(c, hp * wp)
    r = m.shape[0]
    coef_rows = []
    wsum = torch.zeros(r, dtype=torch.float64, device=dev)
    if r:
        gram = _neighbour_gram(gd)

        def at(name: str, da: int, db: int) -> torch.Tensor:  # map value at the corner (iy + da, ix + db)
            t = gram[name]
            return t[(iy + da)][:, (ix + db)].reshape(-1)

        u00, u01, u10, u11 = weight[0][0], weight[0][1], weight[1][0], weight[1][1]
        sq = (
            u00 * u00 * at("nn", 0, 0)
            + u01 * u01 * at("nn", 0, 1)
            + u10 * u10 * at("nn", 1, 0)
            + u11 * u11 * at("nn", 1, 1)
            + 2
            * (
                u00 * u01 * at("dx", 0, 0)
                + u10 * u11 * at("dx", 1, 0)
                + u00 * u10 * at("dy", 0, 0)
                + u01 * u11 * at("dy", 0, 1)
                + u00 * u11 * at("d1", 0, 0)
                + u01 * u10 * at("d2", 0, 0)
            )
        )
        norms = sq.clamp_min(0).sqrt()
        dots_src = m.double() @ gpad  # [R, (h+1)(w+1)]
        # m . f_i = sum over the 4 corners of weight * (m . g_corner), for the S slots of i's class
        first = (pw.clamp(min=0) * s)[None, :] + torch.arange(s, device=dev)[:, None]  # [S, n] rows
        flat_src = dots_src.reshape(-1)
        per_slot = sum(flat_src[first * (hp * wp) + corner[a][bb]] * weight[a][bb] for a in (0, 1) for bb in (0, 1))
        row, wgt = _slot_and_weight(per_slot, norms, pw, mem_norm.double(), s)
        coef = torch.zeros(r * hp * wp, dtype=torch.float64, device=dev)
        base = row * (hp * wp)
        for a in (0, 1):
            for bb in (0, 1):
                coef.index_add_(0, base + corner[a][bb], wgt * weight[a][bb])
        coef_rows.append(coef.view(r, hp * wp))
        wsum.index_add_(0, row, wgt)
    if n_sum:
        one = (ps >= 0).double()
        coef = torch.zeros(n_sum * hp * wp, dtype=torch.float64, device=dev)
        base = ps.clamp(min=0) * (hp * wp)
        for a in (0, 1):
            for bb in (0, 1):
                coef.index_add_(0, base + corner[a][bb], one * weight[a][bb])
        coef_rows.append(coef.view(n_sum, hp * wp))
    acc = torch.cat(coef_rows) @ gpad.t()
    return acc[:r], acc[r:], wsum
