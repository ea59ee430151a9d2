"""ContrastiveSeg plug-in: projection head + pixel contrast loss term + memory queues.

Training only: `forward` adds `embed` (L2-normalised projection, feature resolution) to the
outputs while training; at test time it adds nothing, so inference and export are untouched
(`with_embed = True` makes it emit `embed` in eval too, for `ctxseg viz embed`).
`losses` adds `loss_contrast` (and the `stat_contrast_skipped` counter, logged, never summed);
`after_train_step` updates the pixel/segment queues (memory variant), gathered from every
process so all replicas hold the same queues. Queues and pointers are registered buffers: they
are checkpointed, resumed and exported with the weights, as in the official code.

Official behaviours that are plain plumbing bugs are reachable by recipe options and documented
in docs/contrastiveseg.md: `official_single_process` (the contrast term never switched on in a
non-distributed run), `official_queue_update` (stride-8 label grid indexed into the stride-4 key
map, pixel-queue rows taken from the start of the map, pointer advancing by 1).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ctxseg.errors import UserError
from ctxseg.losses.contrast import downsample_labels, pixel_contrast_loss, sample_anchors
from ctxseg.models.context.base import ContextPlugin, _distributed, gather_across_processes
from ctxseg.models.heads.base import ClassifierSlot


class ProjectionHead(nn.Module):
    """openseg's ProjectionHead: 'linear' = 1x1 conv; 'convmlp' = 1x1 conv, BN, ReLU, 1x1 conv.

    forward returns the projection L2-normalised along channels.

    Args:
        in_channels: channels of the features projected.
        proj_dim: embedding channels.
        proj: "linear" or "convmlp".
    """

    def __init__(self, in_channels: int, proj_dim: int, proj: str = "convmlp"):
        super().__init__()
        if proj == "linear":
            self.proj = nn.Sequential(nn.Conv2d(in_channels, proj_dim, 1))
        elif proj == "convmlp":
            self.proj = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 1),
                nn.BatchNorm2d(in_channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(in_channels, proj_dim, 1),
            )
        else:
            raise UserError(f"model.plugins (pixel_contrast): proj must be 'linear' or 'convmlp', got '{proj}'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x), p=2, dim=1)


class PixelContrast(ContextPlugin):
    """Recipe `[[model.plugins]] type = "pixel_contrast"`: ContrastiveSeg's pixel contrast (tfzhou/ContrastiveSeg).

    The projection reads outputs["feats"] (source "head": the input of the current classifier slot)
    or a backbone level (source "backbone"). See docs/contrastiveseg.md for the official behaviours
    and the options that switch them.

    Args:
        classifier: the current classifier slot (injected by the builder); its input channels size the
            projection with source "head".
        in_channels: channels of every backbone output (injected), for source "backbone".
        num_classes: number of classes (injected: data.num_classes).
        align_corners: `align_corners` of the logits' resize to the embedding grid (injected).
        ignore_index: label value never sampled nor enqueued (injected: data.ignore_index).
        proj_dim: embedding channels (256).
        proj: projection head, "convmlp" or "linear".
        source: what is projected: "head" (outputs["feats"]) or "backbone" (backbone output `in_index`).
        in_index: backbone output projected with source "backbone".
        proj_in_channels: input channels of the projection; None infers them from `source`.
        temperature: softmax temperature T of the contrast loss (0.1).
        base_temperature: the loss is scaled by T / base_temperature (0.07).
        max_samples: anchors per step across all (image, class) pairs (1024).
        max_views: anchors per (image, class) pair at most; a class needs more than this many pixels in
            an image to be sampled (100).
        loss_weight: weight of `loss_contrast` (0.1).
        warmup: the term is added from this training step on (5000).
        sampler: hard-anchor draws. "official": the official `torch.randperm` calls per (image, class),
            hard then easy, in the official order, from torch's default CPU generator, also during the
            warm-up (the official loss samples every step and multiplies the term by 0), so a run
            seeded like the official one draws the same anchors; in a one-process run the queue
            updates' randperm calls also use the default generator, as the official trainer (with
            several processes, and with "fast", a generator seeded by `seed` and the step, the same
            on every replica); "fast": random keys on the embedding's device (the same
            distribution, no host loop, nothing drawn in the warm-up).
        official_single_process: reproduce the official trainer, where the term never switches on in a
            non-distributed run.
        use_queue: memory variant: contrast against per-class segment and pixel queues (registered
            buffers, updated after every step from all processes).
        memory_size: entries per class of each queue.
        pixel_update_freq: pixel embeddings enqueued per image and class per step.
        official_queue_update: reproduce the official queue update (misaligned label grid, first K map
            positions, pointer advancing by 1, class 0 never enqueued).
        network_stride: label subsampling stride of the official queue update.
        queue_skip_class0: leave class 0's queue rows all-zero in the contrast set (official).
        queue_self_mask: remove column r from row r's positives in the contrast set (official).
        seed: seed of the queue updates' random draws (the same on every process).
    """

    default_name = "contrast"  # state-dict prefix plugins.contrast.* (the openseg converter's table)

    def __init__(
        self,
        *,
        classifier: ClassifierSlot,
        in_channels: list[int] | int,
        num_classes: int,
        align_corners: bool = False,
        ignore_index: int = 255,
        proj_dim: int = 256,
        proj: Literal["linear", "convmlp"] = "convmlp",
        source: Literal["head", "backbone"] = "head",
        in_index: int = -1,
        proj_in_channels: int | None = None,
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        max_samples: int = 1024,
        max_views: int = 100,
        loss_weight: float = 0.1,
        warmup: int = 5000,
        sampler: Literal["official", "fast"] = "official",
        official_single_process: bool = False,
        use_queue: bool = False,
        memory_size: int = 5000,
        pixel_update_freq: int = 10,
        official_queue_update: bool = False,
        network_stride: int = 8,
        queue_skip_class0: bool = True,
        queue_self_mask: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        if proj_in_channels is None:
            if source == "head":  # the classifier's input: outputs["feats"] of the head or of a plug-in before
                proj_in_channels = classifier.in_channels
                if proj_in_channels is None:  # an emptied slot (MCIBI): the head returns its features
                    proj_in_channels = getattr(classifier.owner, "channels", None)
            else:
                levels = [in_channels] if isinstance(in_channels, int) else list(in_channels)
                proj_in_channels = levels[in_index] if -len(levels) <= in_index < len(levels) else None
            if not isinstance(proj_in_channels, int):
                raise UserError(
                    "model.plugins (pixel_contrast): cannot infer the projection's input channels; set proj_in_channels"
                )
        self.proj_head = ProjectionHead(proj_in_channels, proj_dim, proj)
        self.num_classes, self.align_corners = num_classes, align_corners
        self.source, self.in_index = source, in_index
        self.temperature, self.base_temperature = temperature, base_temperature
        self.max_samples, self.max_views, self.ignore_index = max_samples, max_views, ignore_index
        self.loss_weight, self.warmup, self.official_single_process = loss_weight, warmup, official_single_process
        if sampler not in ("official", "fast"):
            raise UserError(f"model.plugins (pixel_contrast): sampler must be 'official' or 'fast', got '{sampler}'")
        self.sampler = sampler
        self.use_queue, self.memory_size, self.pixel_update_freq = use_queue, memory_size, pixel_update_freq
        self.official_queue_update, self.network_stride = official_queue_update, network_stride
        self.queue_skip_class0, self.queue_self_mask, self.seed = queue_skip_class0, queue_self_mask, seed
        self.random_sampling = True  # tests set False: candidates in index order (identity permutation)
        self.skipped = 0  # steps whose contrast term was skipped (nothing to contrast / NaN in the official code)
        self.with_embed = False  # emit `embed` in eval too (`viz embed`); training always emits it
        if use_queue:
            for name in ("segment_queue", "pixel_queue"):
                self.register_buffer(name, F.normalize(torch.randn(num_classes, memory_size, proj_dim), p=2, dim=2))
                self.register_buffer(name + "_ptr", torch.zeros(num_classes, dtype=torch.long))

    # ------------------------------------------------------------------------------------------
    def project(self, outputs: dict, backbone_feats: list[torch.Tensor]) -> torch.Tensor:
        """The L2-normalised embedding [B, proj_dim, h, w] (also usable at eval, e.g. `viz embed`)."""
        x = outputs["feats"] if self.source == "head" else backbone_feats[self.in_index]
        return self.proj_head(x)

    def forward(self, outputs: dict, backbone_feats: list[torch.Tensor], targets: torch.Tensor | None = None) -> dict:
        if not (self.training or self.with_embed):
            return {}
        return {"embed": self.project(outputs, backbone_feats)}

    def queue(self) -> torch.Tensor | None:
        if not self.use_queue:
            return None
        return torch.cat([self.segment_queue, self.pixel_queue], dim=1)  # official: Q = 2 * memory_size

    def _active(self, step: int) -> bool:
        if self.official_single_process:
            dist = torch.distributed
            if not (dist.is_available() and dist.is_initialized()):
                return False  # official trainer: `with_embed` only reaches the loss in the distributed branch
        return step >= self.warmup

    def losses(self, outputs: dict, targets: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        if "embed" not in outputs:
            return {}
        embed = outputs["embed"]
        keep_graph = embed.sum() * 0.0  # every parameter stays in the graph (DDP) when the term is off
        active = self._active(step)
        official = self.sampler == "official" and self.random_sampling
        if not active and not official:
            # the official code still computes the term and multiplies it by 0; skipping the
            # computation gives the same gradients (zero) without its cost or its NaNs
            return {"loss_contrast": keep_graph, "stat_contrast_skipped": torch.tensor(float(self.skipped))}
        logits = outputs["logits"]
        if logits.shape[-2:] != embed.shape[-2:]:
            logits = F.interpolate(logits, size=embed.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        predict = logits.detach().argmax(1)
        if not active:
            # warm-up with the official sampler: only the anchors are drawn (the official randperm
            # calls, so the generator advances as in the official run, which samples, computes the
            # term and multiplies it by 0); the term is 0
            b, d, h, w = embed.shape
            sample_anchors(
                embed.detach().reshape(b, d, h * w),
                downsample_labels(targets, (h, w)).reshape(b, -1),
                predict.reshape(b, -1),
                self.max_samples,
                self.max_views,
                self.ignore_index,
                channels_first=True,
                official_draws=True,
            )
            return {"loss_contrast": keep_graph, "stat_contrast_skipped": torch.tensor(float(self.skipped))}
        with torch.autocast(device_type=embed.device.type, enabled=False):
            res = pixel_contrast_loss(
                embed.float(),
                targets,
                predict,
                self.temperature,
                self.base_temperature,
                self.max_samples,
                self.max_views,
                self.ignore_index,
                self.queue(),
                self.queue_skip_class0,
                self.queue_self_mask,
                self.random_sampling,
                official_draws=official,
            )
        if res.degenerate:
            # the official code raises (no class with enough pixels) or returns NaN (a class seen
            # once with max_views 1): skip the term for this step and count it
            self.skipped += 1
            term = keep_graph
        else:
            term = self.loss_weight * res.loss + keep_graph
        return {"loss_contrast": term, "stat_contrast_skipped": torch.tensor(float(self.skipped))}

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def after_train_step(self, outputs: dict, targets: torch.Tensor, step: int, lr: float) -> None:
        if not self.use_queue or "embed" not in outputs:
            return
        keys = gather_across_processes(outputs["embed"].detach().float())
        labels = gather_across_processes(targets)
        if self.sampler == "official" and not _distributed():
            gen = None  # one process: the official `torch.randperm` calls on the default generator
        else:  # several processes: the same draws on every replica (they all update the same queues)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        self.update_queues(keys, labels, gen)

    def _perm(self, n: int, gen: torch.Generator | None) -> torch.Tensor:
        return torch.randperm(n, generator=gen) if self.random_sampling else torch.arange(n)

    @torch.no_grad()
    def update_queues(self, keys: torch.Tensor, labels: torch.Tensor, gen: torch.Generator | None = None) -> None:
        """Enqueue one (gathered) batch: keys [B, D, h, w] unit along D, labels [B, H, W] (image size).

        Per image and class (ascending): the class's mean key (normalised) goes to the segment
        queue; up to `pixel_update_freq` keys go to the pixel queue."""
        b, d, h, w = keys.shape
        if self.official_queue_update:
            lab = labels[:, :: self.network_stride, :: self.network_stride]
            n_lab = lab.shape[1] * lab.shape[2]
            if n_lab > h * w:
                raise UserError(
                    f"model.plugins (pixel_contrast): network_stride={self.network_stride} gives a label grid "
                    f"larger than the "
                    f"embedding ({lab.shape[1]}x{lab.shape[2]} vs {h}x{w})"
                )
            # official misalignment: flat indices of the label grid used on the flat key map
            flat_keys = keys.reshape(b, d, h * w)[:, :, :n_lab]
            valid = (lab > 0) & (lab != self.ignore_index) & (lab < self.num_classes)
        else:
            lab = downsample_labels(labels, (h, w))
            flat_keys = keys.reshape(b, d, h * w)
            valid = (lab >= 0) & (lab != self.ignore_index) & (lab < self.num_classes)
        lab = torch.where(valid, lab, self.num_classes).reshape(b, -1)  # invalid -> an extra column
        onehot = F.one_hot(lab, self.num_classes + 1)[..., : self.num_classes].to(flat_keys.dtype)  # [B, N, C]
        counts = onehot.sum(1)  # [B, C]
        seg_means = F.normalize(
            torch.bmm(flat_keys, onehot), p=2, dim=1
        )  # [B, D, C]; mean then normalise = normalised sum
        m, freq = self.memory_size, self.pixel_update_freq
        for bi, c in (counts > 0).nonzero().tolist():
            ptr = int(self.segment_queue_ptr[c])
            self.segment_queue[c, ptr] = seg_means[bi, :, c]
            self.segment_queue_ptr[c] = (ptr + 1) % m
            num = int(counts[bi, c])
            k = min(num, freq)
            perm = self._perm(num, gen)[:k].to(keys.device)
            if self.official_queue_update:
                cols = perm  # positions of the whole map, not of the class's pixels (official)
            else:
                cols = (lab[bi] == c).nonzero()[:, 0][perm]
            feat = F.normalize(flat_keys[bi][:, cols].T, p=2, dim=1)  # [K, D]
            ptr = int(self.pixel_queue_ptr[c])
            if self.official_queue_update:
                if ptr + k >= m:
                    self.pixel_queue[c, m - k :] = feat
                    self.pixel_queue_ptr[c] = 0
                else:
                    self.pixel_queue[c, ptr : ptr + k] = feat
                    self.pixel_queue_ptr[c] = (ptr + 1) % m
            else:  # a ring buffer: K rows at ptr (wrapping), pointer advances by K
                self.pixel_queue[c, (ptr + torch.arange(k, device=keys.device)) % m] = feat
                self.pixel_queue_ptr[c] = (ptr + k) % m
