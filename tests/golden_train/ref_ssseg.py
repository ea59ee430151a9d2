"""sssegmentation 1.7.0 step-by-step training goldens (issue 22 §1): MCIBI + DeepLabV3.

Imported by generate.py (`runners()`); runs in the reference environment (README.md beside this file):

    export CTXSEG_SSSEG_REPO=<git dir of SegmentationBLWX/sssegmentation>   # configs of eb1878c1
    python tests/golden_train/generate.py --case ssseg-mcibi-deeplabv3-r50-ade20k --seed 0 --iters 40 \\
        --out tests/golden_train/cases

The official config (ssseg/configs/mcibi/mcibi_deeplabv3_resnet50os8_ade20k.py of the pinned commit) is
imported from the exported repository; the model, optimizer and scheduler are built by ssseg's own
BuildSegmentor / BuildOptimizer (params_rules) / BuildScheduler (PolyScheduler, min_lr, warm-up if any)
from it, and every iteration is ssseg's Trainer.start body: `learning_rate = scheduler.updatelr()`,
`optimizer.zero_grad()`, `segmentor(data_meta, learning_rate=..., epoch=...)` (the memory update runs
inside that forward; the memory loss from epoch 2 on), `loss.backward()`, `scheduler.step()` (gradient
clipping if configured, optimizer.step, cur_iter + 1), and `scheduler.cur_epoch = epoch` after each
epoch. The fixed batch pool replaces the shuffled DistributedSampler loader: one epoch = one pass over
the pool in order, so `iters_per_epoch = pool` and the memory loss (ssseg: `epoch > 1`) starts at
iteration `pool` — inside the run instead of after 1263 iterations.

No code of sssegmentation is copied here; its classes are built from its config and called.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import os
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
OFFICIAL_CONFIG = "ssseg/configs/mcibi/mcibi_deeplabv3_resnet50os8_ade20k.py"
POOL = 5  # batches in the pool = iterations per epoch: the memory loss starts at iteration POOL
LR = 0.001  # official 0.01 (see the case's changes)
MEMORY_KEY = "memory_module.memory"
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]  # the config's Normalize (RGB)
# the spread runs besides the two weight perturbations (see _train_ssseg)
SPREAD_LAYOUTS = ["channels_last", "channels_last+w2", "threads2+w3", "float64"]


def _environment():
    warnings.filterwarnings("ignore")
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import torch
    from generate_schedules import SSSEG_REV, configs_on_path, ssseg_environment

    ssseg = ssseg_environment()
    repo = os.environ.get("CTXSEG_SSSEG_REPO")
    if not repo:
        sys.exit("set CTXSEG_SSSEG_REPO to a git dir of SegmentationBLWX/sssegmentation (configs of eb1878c1)")
    if "configs" not in sys.modules:
        configs_on_path(repo, SSSEG_REV)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    return ssseg, SSSEG_REV


def case_ssseg_mcibi_r50_ade20k(iters: int) -> dict:
    """mcibi_deeplabv3_resnet50os8_ade20k: SGD (momentum 0.9, wd 5e-4 on every parameter; params_rules {}:
    one group), PolyScheduler(power 0.9, min_lr = 1% of lr) over max_epochs x iters_per_epoch, memory
    momentum 0.9 / 0.01 x lr, memory loss from epoch 2, stage-1 CE x 0.4, stage-2 CE x 1, aux CE x 0.4."""
    mod = OFFICIAL_CONFIG[len("ssseg/configs/") :].removesuffix(".py").replace("/", ".")
    cfg = copy.deepcopy(importlib.import_module(f"configs.{mod}").SEGMENTOR_CFG)
    nc, epochs = 7, math.ceil(iters / POOL)
    cfg["num_classes"] = nc
    cfg["norm_cfg"] = {"type": "BatchNorm2d"}
    bb = cfg["backbone"]
    assert bb["depth"] == 50 and bb["use_conv3x3_stem"] and bb["outstride"] == 8, bb
    bb.update(pretrained=False, base_channels=2, stem_channels=8)
    head = cfg["head"]
    assert head["in_channels"] == 2048 and head["context_within_image"]["type"] == "aspp", head
    head.update(in_channels=64, feats_channels=16, transform_channels=8, out_channels=16, dropout=0.0)
    head["context_within_image"]["cfg"]["dilations"] = [1, 2, 3, 4]
    assert head["use_loss"], "the ADE20K config trains with the memory loss"
    cfg["auxiliary"].update(in_channels=32, out_channels=16, dropout=0.0)
    opt = cfg["scheduler"]["optimizer"]
    assert opt["lr"] == 0.01 and "min_lr" not in cfg["scheduler"], cfg["scheduler"]
    opt["lr"] = LR
    mom = head["update_cfg"]["momentum_cfg"]
    assert mom["base_lr"] == 0.01 and mom["adjust_by_learning_rate"], mom
    mom["base_lr"] = LR  # momentum = 0.9 / base_lr x lr starts at 0.9, as in the official run
    assert cfg["scheduler"]["type"] == "PolyScheduler" and cfg["scheduler"]["max_epochs"] == 130
    cfg["scheduler"]["max_epochs"] = epochs
    model_cfg = {k: v for k, v in cfg.items() if k not in ("dataset", "dataloader", "logger_handle_cfg")}
    model_cfg = json.loads(json.dumps(model_cfg, sort_keys=True))  # plain, in a stable order (config.json)
    return {
        "official_config": OFFICIAL_CONFIG,
        "segmentor_cfg": model_cfg,
        "iters_per_epoch": POOL,
        "epochs": epochs,
        "shape": {"pool": POOL, "batch": 4, "height": 64, "width": 64, "num_classes": nc},
        "changes": [
            "norm_cfg SyncBatchNorm -> BatchNorm2d (one process); backbone pretrained False (PyTorch's default init, "
            "seeded)",
            "ResNet-50-D8 conv3x3 stem (depth 50 kept): base_channels 64 -> 2, stem_channels 64 -> 8; the last BN "
            "of every bottleneck (bn3) starts with weight 0 (zero-init residual): a randomly initialised 50-layer "
            "BN network explodes gradients (norm ~150 at the stem) and turns float32 rounding into O(1) "
            "differences within two iterations, which would leave nothing to check",
            f"lr 0.01 -> {LR} and update_cfg.momentum_cfg.base_lr 0.01 -> {LR} (the memory momentum still "
            f"starts at 0.9 and follows the lr; min_lr stays 1% of lr): with lr 0.01 this tiny run is chaotic "
            "from iteration 3",
            "head in_channels 2048 -> 64, feats_channels 512 -> 16, transform_channels 256 -> 8, out_channels "
            "512 -> 16; ASPP dilations [1, 12, 24, 36] -> [1, 2, 3, 4] (an 8x8 feature map: 12/24/36 would read "
            "only zero padding off-centre); dropout 0.1 -> 0",
            "auxiliary in_channels 1024 -> 32, out_channels 512 -> 16, dropout 0.1 -> 0; 150 -> 7 classes",
            f"data: 8 processes x 2 images of 512x512 (augmented, shuffled) -> 1 process x 4 images of 64x64 "
            f"from a fixed pool of {POOL} batches in order (no augmentation); ignore label 255 -> -100 "
            "(ssseg's ignore_index)",
            f"one epoch = the pool: iters_per_epoch 1263 -> {POOL}, so the memory loss (epoch > 1) starts at "
            f"iteration {POOL}; max_epochs 130 -> {epochs} (the poly decay over this run's "
            f"{epochs * POOL} iterations)",
        ],
        # the spread includes the official loop in channels-last layout: other convolution kernels, other
        # summation orders at every operation of every iteration (what any re-implementation has), where
        # the two weight perturbations only perturb the start. Measured: channels-last moves the official
        # loop by 0.019 in grad norm at iteration 0 (a ReLU behind self_attention_ms.out_project's
        # low-variance BN flips), 8e-5 in the memory at iteration 1 — 1000x the weight-perturbation spread
        "spread_layouts": SPREAD_LAYOUTS,
        "tolerances": {
            "loss": (0.0, 1e-6, 4.0),
            "grad_norm": (0.0, 2e-5, 4.0),
            "param": (0.0, 1e-5, 10.0),
            "buffer": (0.0, 1e-5, 10.0),
            "optim": (0.0, 1e-5, 10.0),
            "plugin": (0.0, 1e-5, 4.0),
            "loss64": (0.0, 1e-12, 0.0),
            "grad_norm64": (0.0, 1e-10, 0.0),
            "plugin64": (0.0, 1e-12, 0.0),
        },
        "tolerance_what": {
            "loss64": "float64 runs: every loss term and the total, per iteration",
            "grad_norm64": "float64 runs: global gradient norm, per iteration",
            "plugin64": "float64 runs: the memory bank after every iteration (rtol x max |ref|)",
            "plugin": "the memory bank (K x S x C) after every iteration and at the end (max abs diff per "
            "tensor; rtol x max |ref|)",
        },
        "tolerance_notes": "",  # filled by run() from the measured spread (see TOLERANCE_NOTES)
        "ctxseg": {
            "recipe": "mcibi-deeplabv3-r50-ade20k",
            "model_from": "ssseg_segmentor_cfg",
            "overrides": [
                f"train.epochs={epochs}",
                "data.batch_size=4",
                f"train.optimizer.lr={LR}",
                f"train.schedule.min_lr={LR / 100}",
                f"model.plugins.mcibi.base_lr={LR}",
                f"data.num_classes={nc}",
                "data.ignore_index=255",
                "train.processes=1",
            ],
            "terms": {
                "loss_cls_stage2": "loss_ce",
                "loss_cls_stage1": "loss_cls_stage1",
                "loss_aux": "loss_aux",
                "loss_memory": "loss_memory",
            },
            "weights": "ssseg",
        },
    }


CASES = {"ssseg-mcibi-deeplabv3-r50-ade20k": case_ssseg_mcibi_r50_ade20k}

TOLERANCE_NOTES = """\
Why. float64 (rows `*64`): the official loop and ctxseg's Trainer both run again in float64 from the
same weights, the input normalised in float64 on both sides (ref_ssseg.normalized64). There nothing
amplifies rounding beyond what float64 absorbs and the loops agree to float64 precision (seed 0: loss
terms 3e-15, memory 6e-15, grad norm 3e-13 relative at worst; seeds 3 and 5 alike, NCHW and channels-
last): held to 1e-12 / 1e-12 / 1e-10 at every iteration. This is the sharp check (making it possible
fixed ctxseg: its losses rounded float64 logits to float32 and the MCIBI update computed in float32;
both now keep float64).
float32 (rows without 64): these tiny runs are not chaotic (float64 shows it) but ill-conditioned in
float32: low-variance BatchNorms (the ASPP image-pool branch over 4 pooled values, the memory loss's
decoder over 7 entries, self_attention_ms.out_project) amplify rounding and flip ReLUs, at iterations
that differ per implementation and layout (the official loop in channels-last flips one at iteration 0:
grad norm 0.4% off, while perturbing its weights by 1e-7 moves it by 2e-5; ctxseg in NCHW flips at
iteration 1 for seed 2). So the spread is taken over five official runs (initial weights x (1 + 1e-7
N(0,1)) twice, channels-last, channels-last with perturbed weights, two threads with perturbed weights)
and the official float64 run, and ctxseg's own distance to its float64 run is added per iteration and
per final tensor: |ctx32 - off32| <= |ctx32 - ctx64| + |ctx64 - off64| + |off64 - off32|, the middle
term checked above. Held to 4x per iteration, 10x per final tensor and 3x for the median of a kind; the
memory bank (no gradient of its own) to 4x per iteration and at the end.
What it catches (each alone, everything else official): memory base_momentum 0.89 instead of 0.9 at
iteration 1 (float64 grad norm; float32 memory 3e-3 off); strategy "mean" at iteration 1; the memory
loss one epoch late (or from the start) at iteration 5 (or 0), exactly: the term must be absent where
the official loop has none; head_lr_mult 1.1 at iteration 0 (lr); stage1_weight 0.5 at iteration 0; the
aggregation gradient through the memory the forward used (official_aggregation_grad = false) instead of
ssseg's updated memory at iteration 1; weight_decay 4e-4 instead of 5e-4 at iteration 1 (float64 loss,
1.5e-8 relative); SGD momentum 0.89 at iteration 2. train.seed=1 passes (the weights and batches are the
case's)."""


def _inputs(images, labels):
    """ssseg's train input: the Normalize transform of its pipeline (BGR uint8 -> RGB, (x - mean) / std)
    applied to the batch's images, labels with 255 -> -100 (ssseg's ignore_index)."""
    import numpy as np
    import torch
    from ssseg.modules.datasets.pipelines.transforms import Normalize

    norm = Normalize(mean=MEAN, std=STD)
    x = []
    for im in images:
        meta = norm({"image": np.ascontiguousarray(im.permute(1, 2, 0).numpy())})
        x.append(torch.from_numpy(np.ascontiguousarray(meta["image"].transpose(2, 0, 1))))
    y = labels.long()
    y[y == 255] = -100
    return torch.stack(x).float(), y


def normalized64(images):
    """BGR uint8 [N, 3, H, W] -> RGB (x - mean) / std in float64: the float64 runs' input, on both sides."""
    import torch

    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    return (images.flip(1).double() - mean) / std


def _train_ssseg(case: dict, images, labels, seed: int, perturb: int | None):
    """The official loop (see the module docstring). perturb=None: the golden run; perturb=j: every
    initial trainable parameter x (1 + 1e-7 N(0, 1)), seed j; perturb="channels_last": the golden run
    with the model and images in channels-last layout (the reference's own spread)."""
    import torch
    from ssseg.modules import BuildOptimizer, BuildScheduler, BuildSegmentor, SSSegInputStructure

    cfg = copy.deepcopy(case["segmentor_cfg"])
    torch.manual_seed(seed)
    segmentor = BuildSegmentor(segmentor_cfg=cfg, mode="TRAIN")
    with torch.no_grad():  # zero-init residual (the case's changes)
        for name, mod in segmentor.backbone_net.named_modules():
            if name.endswith(".bn3"):
                mod.weight.zero_()
    # perturb: None, a seed j (weights x (1 + 1e-7 N(0, 1))), or a spread_layouts entry: "+"-joined
    # "channels_last" (model and images in that layout), "threads2" (two threads: other reduction
    # splits), "w<j>" (the weight perturbation of seed j)
    parts = perturb.split("+") if isinstance(perturb, str) else []
    channels_last = "channels_last" in parts
    dtype = torch.float64 if "float64" in parts else torch.float32
    weight_seed = perturb if isinstance(perturb, int) else next((int(q[1:]) for q in parts if q[:1] == "w"), None)
    torch.set_num_threads(2 if "threads2" in parts else 1)
    if channels_last:
        segmentor = segmentor.to(memory_format=torch.channels_last)
    segmentor = segmentor.to(dtype)
    if weight_seed is not None:
        g = torch.Generator().manual_seed(1000 + weight_seed)
        with torch.no_grad():
            for p in segmentor.parameters():
                if p.requires_grad:
                    p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=g))
    init = {k: v.detach().clone().contiguous() for k, v in segmentor.state_dict().items()}
    optimizer = BuildOptimizer(segmentor, cfg["scheduler"]["optimizer"])
    scheduler_cfg = copy.deepcopy(cfg["scheduler"])
    scheduler_cfg.update(
        {
            "lr": cfg["scheduler"]["optimizer"]["lr"],
            "iters_per_epoch": case["iters_per_epoch"],
            "params_rules": cfg["scheduler"]["optimizer"]["params_rules"],
        }
    )
    scheduler = BuildScheduler(optimizer=optimizer, scheduler_cfg=scheduler_cfg)
    assert scheduler.max_iters == len(case["iters"]), (scheduler.max_iters, len(case["iters"]))
    # trainable parameters only: the memory bank is a Parameter with requires_grad=False (never stepped)
    names = {id(p): n for n, p in segmentor.named_parameters() if p.requires_grad}
    groups = [[names[id(p)] for p in g["params"] if id(p) in names] for g in optimizer.param_groups]
    memory = dict(segmentor.named_parameters())[MEMORY_KEY]

    records = []
    it = 0
    for epoch in range(1, scheduler_cfg["max_epochs"] + 1):
        segmentor.train()
        for b in range(case["iters_per_epoch"]):
            learning_rate = scheduler.updatelr()
            lrs = [float(g["lr"]) for g in optimizer.param_groups]
            x, y = _inputs(images[b], labels[b])
            if dtype == torch.float64:  # the input normalised in float64 (the test does the same)
                x = normalized64(images[b])
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            data_meta = SSSegInputStructure(mode="TRAIN", images=x, seg_targets=y)
            optimizer.zero_grad()
            out = segmentor(data_meta, learning_rate=learning_rate, epoch=epoch)
            loss, log = out.getsetvariables().values()
            loss.backward()
            grads = [p.grad.detach() for p in segmentor.parameters() if p.grad is not None]
            grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
            scheduler.step(grad_scaler=None)
            losses = {k: float(v) for k, v in log.items()}
            losses["loss"] = float(loss)
            records.append(
                {
                    "iter": it,
                    "batch": b,
                    "epoch": epoch,
                    "lr": lrs,
                    "learning_rate": float(learning_rate),
                    "losses": losses,
                    "grad_norm": grad_norm,
                    "plugin": {MEMORY_KEY: memory.detach().clone().contiguous()},
                }
            )
            print(f"{perturb} iter {it} epoch {epoch}: loss {losses['loss']:.6f} lr {lrs[0]:.6g}", file=sys.stderr)
            it += 1
        scheduler.cur_epoch = epoch

    final = {f"state.{k}": v.detach().clone().contiguous() for k, v in segmentor.state_dict().items()}
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                final[f"optim.{names[id(p)]}.{k}"] = v.detach().clone().contiguous()
            elif torch.is_tensor(v) or isinstance(v, (int, float)):
                final[f"optim.{names[id(p)]}.{k}"] = torch.tensor(float(v), dtype=torch.float64)
    return init, records, final, groups, names


def run(name: str, seed: int, iters: int, out: Path) -> None:
    import generate

    ssseg, rev = _environment()
    case = CASES[name](iters)
    total = case["epochs"] * case["iters_per_epoch"]
    if total != iters:
        print(f"{name}: {iters} iterations -> {total} (whole epochs of {POOL})", file=sys.stderr)
    case["iters"] = range(total)
    case["tolerance_notes"] = TOLERANCE_NOTES
    case["reference_text"] = (
        "its model, optimizer and scheduler\nare built by ssseg's BuildSegmentor / BuildOptimizer / "
        "BuildScheduler and stepped as ssseg's\nTrainer.start does (updatelr, zero_grad, forward with "
        "learning_rate and epoch, backward,\nscheduler.step; scheduler.cur_epoch = epoch after each epoch), "
        f"{total} iterations ({case['epochs']} epochs of\n{POOL}), seed {seed}. Initial weights: ssseg's own "
        "construction after `torch.manual_seed(seed)`."
    )
    reference = {
        "code": "sssegmentation",
        "version": ssseg.__version__,
        "configs_commit": rev,
        "config": OFFICIAL_CONFIG,
        "loop": "scheduler.updatelr(); optimizer.zero_grad(); segmentor(data_meta, learning_rate, epoch); "
        "loss.backward(); scheduler.step(); scheduler.cur_epoch = epoch after each epoch",
    }
    extra = {
        "ssseg_segmentor_cfg": case["segmentor_cfg"],
        "iters_per_epoch": case["iters_per_epoch"],
        "epochs": case["epochs"],
        "memory_loss_starts_at_iter": case["iters_per_epoch"],
        "plugin_state": {MEMORY_KEY: "the memory bank after every iteration (plugin_steps.safetensors)"},
        "batches_to_ssseg": "images: ssseg's Normalize (BGR -> RGB, (x - mean) / std); labels: 255 -> -100",
    }
    generate.run_case(name, case, _train_ssseg, reference, extra, seed, out)
