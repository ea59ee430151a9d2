#!/usr/bin/env python3
"""Step-by-step training goldens from the official training loops (issue 22 §1-2).

Runs in the reference environment (tests/golden_train/README.md says how to create it), never in CI:

    python tests/golden_train/generate.py --list
    python tests/golden_train/generate.py --case mmseg-ocrnet-hr18-cityscapes-80k --seed 0 --iters 40 \\
        --out tests/golden_train/cases

For each case it builds the official model (tiny widths, same structure), the official optimizer
wrapper and parameter schedulers from the official config, and runs the official training step
(`model.train_step(data, optim_wrapper)` + `scheduler.step()` per iteration, as mmengine's
IterBasedTrainLoop and ParamSchedulerHook do) on fixed seeded batches, on one CPU thread. It writes
the case folder `<out>/<case>/`:

    config.json         what was built: official config file, its optim_wrapper / param_scheduler (as
                        run), the tiny model config, the ctxseg recipe + overrides that reproduce it,
                        the loss-term name map, the param-group membership of every parameter
    batches.safetensors the batch pool: image_bgr_uint8 [P, N, 3, H, W], label [P, N, H, W] (uint8,
                        255 = ignore); iteration i uses batch i % P
    init.safetensors    the initial state_dict (official key names)
    records.json        per iteration: lr and weight decay of every param group (float64, as json;
                        groups equal in both at every iteration and in their other settings merged,
                        `merge_groups`; records[0]["optimizer"]: those settings), every loss term,
                        the global gradient norm (2-norm of all gradients before the optimizer step),
                        and `spread`: how far the reference itself moves (max over 2 runs) when every
                        initial parameter is perturbed by a relative 1e-7 (float32 rounding size)
    final_spread.json   the same spread for every final tensor (max abs difference)
    final.safetensors   after the last iteration: every parameter and buffer (`state.<key>`) and the
                        optimizer state (`optim.<param name>.<state key>`, e.g. momentum_buffer,
                        exp_avg; a scalar such as AdamW's `step` as a 0-dim float64 tensor)
    plugin_steps.safetensors  (cases with stateful plug-ins: MCIBI's memory) the plug-in state after every
                        iteration, official key -> [iters, ...]; its spread per iteration is
                        records.json's `spread.plugin`
    (cases whose spread_layouts list "float64") records.json's `float64` per iteration and
    plugin_steps_float64.safetensors: the same official run in float64
    README.md           what the case is and the tolerances the test uses

Official code locations: mmsegmentation / mmengine / mmcv(-lite) are the installed packages of the
interpreter that runs this script; the configs are read from `$CTXSEG_REF_MMSEG_CONFIGS` (default:
the `.mim/configs` folder inside the installed mmseg package).

The script contains no code of the official repositories; it builds their classes from their
configs and calls their public methods.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import logging
import os
import sys
import types
import warnings
from pathlib import Path

MMSEG_VERSION = "1.2.2"
IMG_MEAN = [123.675, 116.28, 103.53]
IMG_STD = [58.395, 57.12, 57.375]


# ------------------------------------------------------------------------------------------------
# environment


def _ensure_mmcv_ops() -> None:
    """mmseg imports ``mmcv.ops``; mmcv-lite has no compiled ops and none of these models needs them."""
    try:
        importlib.import_module("mmcv.ops")
        return
    except Exception:  # noqa: BLE001 - ImportError or a missing compiled extension
        pass

    class _Placeholder(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {})

    sys.modules["mmcv.ops"] = _Placeholder("mmcv.ops")


def _mmseg():
    warnings.filterwarnings("ignore")
    _ensure_mmcv_ops()
    import mmseg
    import torch
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    logging.getLogger("mmengine").setLevel(logging.WARNING)  # mmengine's per-parameter init/paramwise log
    if mmseg.__version__ != MMSEG_VERSION:
        print(f"WARNING: mmseg {mmseg.__version__} != {MMSEG_VERSION}", file=sys.stderr)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    return mmseg


def _mmseg_config(rel: str):
    from mmengine import Config

    mmseg = _mmseg()
    root = Path(os.environ.get("CTXSEG_REF_MMSEG_CONFIGS", Path(mmseg.__file__).parent / ".mim" / "configs"))
    path = root / rel
    if not path.is_file():
        sys.exit(f"official config not found: {path} (set CTXSEG_REF_MMSEG_CONFIGS to mmseg's configs/ folder)")
    return Config.fromfile(str(path)), path


# ------------------------------------------------------------------------------------------------
# batches


def make_batches(seed: int, pool: int, n: int, h: int, w: int, num_classes: int):
    """A pool of `pool` batches of `n` images: blocky label maps (a few ignore pixels), images = a
    colour per class + noise, so the loss falls over the iterations. Returns (images [P,N,3,H,W] uint8
    BGR, labels [P,N,H,W] uint8)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, num_classes, (pool * n, 1, h // 8, w // 8), generator=g).float()
    labels = F.interpolate(coarse, size=(h, w), mode="nearest").long()[:, 0]
    ignore = torch.rand((pool * n, h, w), generator=g) < 0.05
    colours = torch.randint(0, 256, (num_classes, 3), generator=g).float()
    img = colours[labels].permute(0, 3, 1, 2) + 40.0 * torch.randn((pool * n, 3, h, w), generator=g)
    labels[ignore] = 255
    img = img.round().clamp(0, 255).to(torch.uint8)
    return img.reshape(pool, n, 3, h, w), labels.to(torch.uint8).reshape(pool, n, h, w)


def _seg_data(images, labels):
    """mmseg's train_step input: dict(inputs=[CHW uint8], data_samples=[SegDataSample])."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    samples = []
    for lab in labels:
        s = SegDataSample()
        h, w = lab.shape
        s.set_metainfo({"img_shape": (h, w), "ori_shape": (h, w), "pad_shape": (h, w), "flip": False})
        s.gt_sem_seg = PixelData(data=lab[None].long())
        samples.append(s)
    return {"inputs": [im.clone() for im in images], "data_samples": samples}


# ------------------------------------------------------------------------------------------------
# cases


def _to_bn(cfg):
    """SyncBN -> BN everywhere (one process; mmengine's Runner reverts SyncBN when not distributed)."""
    if isinstance(cfg, dict):
        out = {k: _to_bn(v) for k, v in cfg.items()}
        if out.get("type") == "SyncBN":
            out["type"] = "BN"
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_to_bn(v) for v in cfg)
    return cfg


def _plain(cfg):
    """mmengine ConfigDict -> plain dict/list (json-able; tuples become lists)."""
    if isinstance(cfg, dict):
        return {k: _plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [_plain(v) for v in cfg]
    return cfg


def case_mmseg_ocrnet_hr18(iters: int) -> dict:
    """mmseg 1.2.2 ocrnet_hr18_4xb2-80k_cityscapes-512x1024: SGD (momentum 0.9, wd 5e-4 on every
    parameter), PolyLR(power 0.9, eta_min 1e-4) over the run, FCN region head loss 0.4 + OCR head 1.0."""
    cfg, path = _mmseg_config("ocrnet/ocrnet_hr18_4xb2-80k_cityscapes-512x1024.py")
    ch, nc = [4, 8, 16, 32], 7
    model = _to_bn(_plain(cfg.model))
    model.pop("pretrained", None)
    model["backbone"].pop("init_cfg", None)
    model["data_preprocessor"]["size"] = [64, 64]
    extra = model["backbone"]["extra"]
    extra["stage1"].update(num_blocks=[2], num_channels=[4])
    extra["stage2"].update(num_blocks=[1, 1], num_channels=ch[:2])
    extra["stage3"].update(num_modules=2, num_blocks=[1, 1, 1], num_channels=ch[:3])
    extra["stage4"].update(num_modules=1, num_blocks=[1, 1, 1, 1], num_channels=ch)
    fcn, ocr = model["decode_head"]
    fcn.update(in_channels=ch, channels=sum(ch), num_classes=nc)
    ocr.update(in_channels=ch, channels=16, ocr_channels=8, num_classes=nc)
    sched = _plain(cfg.param_scheduler)
    assert len(sched) == 1 and sched[0]["type"] == "PolyLR" and sched[0]["end"] == cfg.train_cfg.max_iters
    sched[0]["end"] = iters  # the poly decay over this run's length (ctxseg: train.iters = iters)
    return {
        "official_config": str(path.relative_to(path.parents[1])),
        "model": model,
        "optim_wrapper": _plain(cfg.optim_wrapper),
        "param_scheduler": sched,
        "shape": {"pool": 4, "batch": 2, "height": 64, "width": 64, "num_classes": nc},
        "changes": [
            "norm_cfg SyncBN -> BN (one process); backbone init_cfg/pretrained removed (seeded init_weights)",
            "HRNet stage channels (18,36,72,144) -> (4,8,16,32), stage1 64 -> 4 channels, fewer blocks/modules",
            "FCN region head channels 270 -> 60, OCR head channels 512 -> 16, ocr_channels 256 -> 8, 19 -> 7 classes",
            "data_preprocessor size (512,1024) -> (64,64); PolyLR end 80000 -> iters",
        ],
        # measured (seed 0, 40 iterations): iterations 0-1 agree to 1.5e-7 (loss) / 6e-6 (grad norm,
        # whose own spread is 1e-4 already at iteration 0); from iteration 2 on |ours - ref| is up to
        # ~2.5x the reference's own spread (running max); final tensors: per-tensor ratio to their
        # spread median 0.5-1.8, max 6.2 over 238 momentum buffers (NCHW; 3.5 channels-last). The spread
        # is a max over two perturbed runs, a small sample of a chaotic tail: with ~600 final tensors
        # compared one by one a few land at several times it, so the per-tensor bound is 10x and
        # the median over the tensors of a kind (tests/test_train_golden.py) must stay <= 3x.
        "tolerances": {
            "loss": (0.0, 1e-6, 4.0),
            "grad_norm": (0.0, 2e-5, 4.0),
            "param": (0.0, 1e-5, 10.0),
            "buffer": (0.0, 1e-5, 10.0),
            "optim": (0.0, 1e-5, 10.0),
        },
        "tolerance_notes": (
            "Why: float32 sums of up to ~1e5 terms in a different order (NCHW or channels-last on the\n"
            "CPU) differ by ~1e-7 relative per operation, so iterations 0-1 agree to ~1e-6 (loss) and ~1e-5\n"
            "(grad norm). This tiny OCRNet run is chaotic: a relative 1e-7 perturbation of the official\n"
            "loop's own initial weights moves its loss by ~3e-3 at iteration 2 and ~5e-2 from iteration 4\n"
            "on, its grad norm by up to 10x; the spread stored per iteration (records.json) and per final\n"
            "tensor (final_spread.json) bounds what any float32 re-implementation can match. Measured\n"
            "(seed 0): ctxseg is within 2.5x of that spread per iteration (running max); at the end the\n"
            "median ratio per tensor kind is 0.5-1.8 and the largest 6.2 (one of 238 momentum buffers,\n"
            "NCHW convolutions; 3.5 channels-last). The spread is a max over eight perturbed runs (two\n"
            "under-sampled it: a 1e-7 nudge flips a gradient jump in one HRNet branch in 5 of 6 draws), so\n"
            "each final tensor is held to 10x it and the median over a kind's tensors to 3x."
        ),
        "spread_runs": 8,
        "ctxseg": {
            "recipe": "ocrnet-hr18-cityscapes-80k",
            "model_from": "mmseg_model_cfg",
            "overrides": [f"train.iters={iters}", "data.batch_size=2", f"data.num_classes={nc}"],
            "terms": {"decode_0.loss_ce": "loss_aux", "decode_1.loss_ce": "loss_ce"},
            "weights": "mmseg",
        },
    }


def case_mmseg_upernet_swin_b(iters: int) -> dict:
    """mmseg 1.2.2 swin-base-patch4-window12-in22k-384x384-pre_upernet_8xb2-160k_ade20k-512x512 (the plain
    counterpart of upernet-cac-swin-b-ade20k-160k): AdamW (lr 6e-5, betas (0.9, 0.999), wd 0.01) with
    paramwise custom_keys absolute_pos_embed / relative_position_bias_table / norm -> decay_mult 0,
    LinearLR(start_factor 1e-6) warm-up then PolyLR(power 1, eta_min 0), UPerHead 1.0 + FCN aux head 0.4."""
    cfg, path = _mmseg_config("swin/swin-base-patch4-window12-in22k-384x384-pre_upernet_8xb2-160k_ade20k-512x512.py")
    dims, nc, warmup = 6, 7, 10
    chans = [dims * 2**i for i in range(4)]
    model = _to_bn(_plain(cfg.model))
    model.pop("pretrained", None)
    model["backbone"].pop("init_cfg", None)
    model["data_preprocessor"]["size"] = [64, 64]
    bb = model["backbone"]
    assert bb["type"] == "SwinTransformer" and bb["depths"] == [2, 2, 18, 2] and bb["window_size"] == 12, bb
    bb.update(
        embed_dims=dims,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 4, 8],
        window_size=4,
        pretrain_img_size=64,
        use_abs_pos_embed=True,
        drop_path_rate=0.0,
    )
    head, aux = model["decode_head"], model["auxiliary_head"]
    assert head["type"] == "UPerHead" and aux["type"] == "FCNHead" and aux["loss_decode"]["loss_weight"] == 0.4
    head.update(in_channels=chans, channels=8, num_classes=nc, dropout_ratio=0.0)
    aux.update(in_channels=chans[2], channels=8, num_classes=nc, dropout_ratio=0.0)
    sched = _plain(cfg.param_scheduler)
    assert [s["type"] for s in sched] == ["LinearLR", "PolyLR"] and sched[0]["end"] == sched[1]["begin"] == 1500
    assert sched[1]["end"] == cfg.train_cfg.max_iters and not sched[0]["by_epoch"] and not sched[1]["by_epoch"]
    sched[0]["end"] = sched[1]["begin"] = warmup
    sched[1]["end"] = iters
    optim = _plain(cfg.optim_wrapper)
    assert optim["optimizer"]["type"] == "AdamW" and set(optim["paramwise_cfg"]["custom_keys"]) == {
        "absolute_pos_embed",
        "relative_position_bias_table",
        "norm",
    }, optim
    return {
        "official_config": str(path.relative_to(path.parents[1])),
        "model": model,
        "optim_wrapper": optim,
        "param_scheduler": sched,
        "shape": {"pool": 4, "batch": 2, "height": 64, "width": 64, "num_classes": nc},
        "changes": [
            "norm_cfg SyncBN -> BN (one process); backbone init_cfg/pretrained removed (seeded init_weights)",
            f"Swin-B embed_dims 128 -> {dims}, depths (2,2,18,2) -> (2,2,2,2), num_heads (4,8,16,32) -> (1,2,4,8)"
            f" (head dims 32 -> {dims}; the case folder stays < 2 MB), window_size 12 -> 4 (at a 64x64 crop"
            " the stages are 16, 8, 4, 2 tokens wide: shifted windows with masks, a single window that is"
            " still shifted, a padded window)",
            "use_abs_pos_embed False -> True with pretrain_img_size 384 -> 64 (so the absolute_pos_embed"
            " custom key has a parameter to act on)",
            "drop_path_rate 0.3 -> 0, decode/auxiliary dropout_ratio 0.1 -> 0 (their random masks come from"
            " each code base's own RNG use; everything else of the step is deterministic)",
            f"UPerHead channels 512 -> 8, FCN aux head channels 256 -> 8, 150 -> {nc} classes",
            f"data_preprocessor size (512,512) -> (64,64); LinearLR end 1500 -> {warmup}, PolyLR begin 1500 ->"
            f" {warmup}, end 160000 -> iters (warm-up and decay both inside the run)",
        ],
        # measured (seed 0, 40 iterations, 6 perturbed runs): loss terms within 2.4e-7 relative (one
        # float32 ulp) at every iteration, <= 1.0x the running spread; grad norm <= 1.6e-7 relative at
        # iterations 0-2, <= 2.0x the running spread after; final tensors |ours - ref| / spread: params
        # median 0.68 max 1.1, buffers 0.68 / 0.93, AdamW state 0.48 / 2.9 (exp_avg_sq of a LayerNorm
        # bias, values ~1e-22). Seeds 1-3: per iteration <= 1.7x, final <= 3.5x. None needs the rtol term.
        "tolerances": {
            "loss": (0.0, 1e-6, 4.0),
            "grad_norm": (0.0, 1e-6, 4.0),
            "param": (0.0, 1e-6, 6.0),
            "buffer": (0.0, 1e-6, 6.0),
            "optim": (0.0, 1e-6, 6.0),
        },
        "optim_what": "every AdamW state tensor (exp_avg, exp_avg_sq); the scalar `step` exact",
        # the grad-norm spikes (patch-merging reductions, ~7x the usual norm, once or twice a run) are the
        # most sensitive events; 2 perturbed runs under-sample their spread (seed 2: ctxseg at 8.7x it)
        "spread_runs": 6,
        "tolerance_notes": (
            "Why: at the official lr (6e-5, warm-up from 6e-11) this tiny Swin-UperNet run moves its\n"
            "weights by ~1e-3 in 40 iterations and is much less chaotic than the OCRNet case: a relative\n"
            "1e-7 perturbation of the official loop's initial weights moves its loss by <= 5e-7 and its grad\n"
            "norm by <= 7e-5, except at its grad-norm spikes (iterations 7 and 9: 4.8 and 1.6 against ~0.2,\n"
            "gradients of the patch-merging reductions), where it moves it by up to 9e-3. The spread is the\n"
            "max over 6 perturbed runs: with 2, seed 2's spike (iteration 14) was under-sampled 10x and\n"
            "ctxseg sat at 8.7x it; on the same weights at that iteration ctxseg's grad norm is within 1e-5 of\n"
            "mmseg's (the official one itself moves 8e-5 under a 1e-7 perturbation of those weights), so the\n"
            "distance is the trajectory's chaos, not a difference of the step. Measured (seed 0): ctxseg's\n"
            "loss terms agree to one float32 ulp (2.4e-7 relative) at every iteration, its grad norm to\n"
            "1.6e-7 relative at iterations 0-2 and within 2.0x the running spread after; final tensors:\n"
            "|ours - ref| / spread median 0.5-0.7 per kind, max 1.1 (parameters), 0.93 (BN buffers), 2.9\n"
            "(AdamW exp_avg_sq of a LayerNorm bias); seeds 1-3 at most 1.7x per iteration, 3.5x final. So\n"
            "the bounds are 4x the spread per iteration and 6x per final tensor, with rtol 1e-6 (~8 float32\n"
            "ulps of max |ref|) as a floor for tensors whose spread is ~0; none of the measured differences\n"
            "needs that floor. The lr (relative 1e-12) and weight decay (exact) of every parameter and\n"
            "AdamW's betas / eps / amsgrad / maximize / decoupled_weight_decay per official group are\n"
            "compared at every iteration; AdamW's `step` and BN's num_batches_tracked exactly. What the\n"
            "dynamic checks can and cannot see (tests/golden_train/mutations.py): tests/golden_train/README.md."
        ),
        "ctxseg": {
            "recipe": "upernet-swin-b-ade20k-160k",
            "model_from": "mmseg_model_cfg",
            "overrides": [
                f"train.iters={iters}",
                f"train.schedule.warmup_iters={warmup}",
                "data.batch_size=2",
                f"data.num_classes={nc}",
            ],
            "terms": {"decode.loss_ce": "loss_ce", "aux.loss_ce": "loss_aux"},
            "weights": "mmseg",
        },
    }


CASES = {
    "mmseg-ocrnet-hr18-cityscapes-80k": case_mmseg_ocrnet_hr18,
    "mmseg-upernet-swin-b-ade20k-160k": case_mmseg_upernet_swin_b,
}


# ------------------------------------------------------------------------------------------------
# the official loop


def _train_mmseg(case: dict, images, labels, seed: int, perturb: int | None):
    """The official loop over the case. perturb=None: the golden run; perturb=j: the same run with every
    initial parameter multiplied by (1 + 1e-7 * N(0, 1)) (seed j), the size of a float32 rounding
    difference, to measure how much the reference itself moves under such differences."""
    import torch
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS, PARAM_SCHEDULERS

    shp = case["shape"]
    torch.manual_seed(seed)
    model = MODELS.build(copy.deepcopy(case["model"]))
    model.init_weights()
    model.train()
    if perturb is not None:
        g = torch.Generator().manual_seed(1000 + perturb)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=g))
    init = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    optim_wrapper = build_optim_wrapper(model, copy.deepcopy(case["optim_wrapper"]))
    schedulers = [
        PARAM_SCHEDULERS.build({**copy.deepcopy(s), "optimizer": optim_wrapper}) for s in case["param_scheduler"]
    ]
    names = {id(p): n for n, p in model.named_parameters()}
    # the optimizer's own groups: OptimWrapper.param_groups appends a placeholder group (its
    # base_param_settings, a scalar tensor) when there are several
    real_groups = optim_wrapper.optimizer.param_groups
    groups = [[names[id(p)] for p in g["params"]] for g in real_groups]

    # the global gradient norm, taken where OptimWrapper steps (after backward, before the update)
    grad_norms = []
    real_step = optim_wrapper.step

    def step_and_record(**kw):
        grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
        grad_norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return real_step(**kw)

    optim_wrapper.step = step_and_record
    records = []
    for it in range(len(case["iters"])):
        b = it % shp["pool"]
        lrs = [float(g["lr"]) for g in real_groups]
        wds = [float(g["weight_decay"]) for g in real_groups]
        log_vars = model.train_step(_seg_data(images[b], labels[b]), optim_wrapper)
        for s in schedulers:  # ParamSchedulerHook.after_train_iter (by_epoch=False)
            s.step()
        losses = {k: float(v) for k, v in log_vars.items()}
        rec = {"iter": it, "batch": b, "lr": lrs, "weight_decay": wds, "losses": losses, "grad_norm": grad_norms[-1]}
        records.append(rec)
        print(f"{perturb} iter {it}: loss {losses['loss']:.6f} lr {lrs[0]:.6g}", file=sys.stderr)
    groups = merge_groups(groups, records, [_hyper(g) for g in real_groups])

    final = {f"state.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for p, st in optim_wrapper.optimizer.state.items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                final[f"optim.{names[id(p)]}.{k}"] = v.detach().clone().contiguous()
            elif torch.is_tensor(v) or isinstance(v, (int, float)):
                final[f"optim.{names[id(p)]}.{k}"] = torch.tensor(float(v), dtype=torch.float64)
    return init, records, final, groups, names


def _plugin_steps(records: list[dict]) -> dict:
    """Pop the per-iteration plug-in state (`record["plugin"]`: official key -> tensor after the step)
    from the records; returns official key -> [iters, ...] (empty when the loop records none)."""
    import torch

    steps = [r.pop("plugin", None) for r in records]
    if not any(steps):
        return {}
    return {k: torch.stack([s[k] for s in steps]).contiguous() for k in steps[0]}


# the settings of a torch param group that change what a step computes (besides lr and weight decay);
# foreach / fused / capturable / differentiable choose an implementation of the same update
HYPER = ("betas", "eps", "amsgrad", "maximize", "decoupled_weight_decay", "momentum", "dampening", "nesterov")


def _hyper(group: dict) -> dict:
    """A torch param group's HYPER settings (json-able)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in group.items() if k in HYPER}


def merge_groups(groups: list[list[str]], records: list[dict], hyper: list[dict]) -> list[list[str]]:
    """Merge the official param groups that are equal in everything the step uses (lr and weight decay
    at every iteration, the other settings) into one: mmengine's paramwise constructor makes one group
    per parameter, ~170 lr values per iteration for a Swin. Rewrites records in place (`lr` and
    `weight_decay` per merged group; records[0]["optimizer"]: the settings of each merged group, e.g.
    AdamW's betas and eps) and returns the merged membership."""
    keys = [
        json.dumps([[r["lr"][i] for r in records], [r["weight_decay"][i] for r in records], hyper[i]], sort_keys=True)
        for i in range(len(groups))
    ]
    order = list(dict.fromkeys(keys))
    first = [keys.index(k) for k in order]
    merged = [[n for i, g in enumerate(groups) if keys[i] == k for n in g] for k in order]
    for r in records:
        r["lr"] = [r["lr"][i] for i in first]
        r["weight_decay"] = [r["weight_decay"][i] for i in first]
    records[0]["optimizer"] = [hyper[i] for i in first]
    return merged


def run_case(
    name: str, case: dict, train, reference: dict, extra: dict, seed: int, out: Path, spread_runs: int = 2
) -> None:
    """Run one case with `train(case, images, labels, seed, perturb) -> (init, records, final, groups,
    names)` (the official loop of one code base: perturb=None is the golden run, perturb=j the same run
    from initial weights x (1 + 1e-7 N(0,1)), seed j, and perturb="channels_last" for each entry of the
    case's `spread_layouts`: the golden run in that memory layout), measure the reference's own spread
    and write the case folder. `reference` describes the official code (code, version, config, loop); `extra` is
    merged into config.json (what the ctxseg side needs to rebuild the tiny model)."""
    import torch
    from safetensors.torch import save_file

    iters = len(case["iters"])
    shp = case["shape"]
    images, labels = make_batches(seed, shp["pool"], shp["batch"], shp["height"], shp["width"], shp["num_classes"])
    init, records, final, groups, names = train(case, images, labels, seed, None)
    plugin_steps = _plugin_steps(records)
    group_of = {n: i for i, g in enumerate(groups) for n in g}

    # the reference's own spread under float32-rounding-sized perturbations of the initial weights, and
    # (cases listing `spread_layouts`) under another summation order: the same run in another memory layout
    spread_final: dict[str, float] = {}
    perturbations = [*range(spread_runs), *case.get("spread_layouts", [])]
    steps64: dict = {}
    for j in perturbations:
        _, rec_j, fin_j, _, _ = train(case, images, labels, seed, j)
        steps_j = _plugin_steps(rec_j)
        if j == "float64":  # the same run in float64: kept as a reference of its own (records' `float64`)
            steps64 = {k: v.double().contiguous() for k, v in steps_j.items()}
            for r, rj in zip(records, rec_j):
                r["float64"] = {"losses": rj["losses"], "grad_norm": rj["grad_norm"], "lr": rj["lr"]}
        for i, (r, rj) in enumerate(zip(records, rec_j)):
            sp = r.setdefault("spread", {"losses": {}, "grad_norm": 0.0})
            for k, v in r["losses"].items():
                sp["losses"][k] = max(sp["losses"].get(k, 0.0), abs(rj["losses"][k] - v))
            sp["grad_norm"] = max(sp["grad_norm"], abs(rj["grad_norm"] - r["grad_norm"]))
            for k, v in plugin_steps.items():
                diff = float((steps_j[k][i].double() - v[i].double()).abs().max())
                sp.setdefault("plugin", {})[k] = max(sp.get("plugin", {}).get(k, 0.0), diff)
        for k, v in final.items():
            if v.is_floating_point():
                diff = float((fin_j[k].double() - v.double()).abs().max())
                spread_final[k] = max(spread_final.get(k, 0.0), diff)

    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    meta = {"case": name, "seed": str(seed), "iters": str(iters)}
    save_file(
        {"image_bgr_uint8": images.contiguous(), "label": labels.contiguous()}, str(d / "batches.safetensors"), meta
    )
    save_file(init, str(d / "init.safetensors"), meta)
    save_file(final, str(d / "final.safetensors"), meta)
    if plugin_steps:
        save_file(plugin_steps, str(d / "plugin_steps.safetensors"), meta)
    if steps64:
        save_file(steps64, str(d / "plugin_steps_float64.safetensors"), meta)
    (d / "records.json").write_text(json.dumps(records, indent=1) + "\n")
    (d / "final_spread.json").write_text(json.dumps(spread_final, indent=1, sort_keys=True) + "\n")
    config = {
        "case": name,
        "seed": seed,
        "iters": iters,
        "reference": {**reference, "torch": torch.__version__, "spread_runs": perturbations},
        "changes": case["changes"],
        **extra,
        "num_classes": shp["num_classes"],
        "batches": {**shp, "iteration_uses": "batch iter % pool"},
        "param_groups": {n: group_of[n] for n in names.values()},
        "ctxseg": case["ctxseg"],
    }
    (d / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    (d / "README.md").write_text(_readme(name, case, config))
    print(f"wrote {d}", file=sys.stderr)


def run_mmseg(name: str, seed: int, iters: int, out: Path) -> None:
    mmseg = _mmseg()
    case = CASES[name](iters)
    case["iters"] = range(iters)
    reference = {
        "code": "mmsegmentation",
        "version": mmseg.__version__,
        "config": case["official_config"],
        "loop": "model.train_step(data, optim_wrapper); scheduler.step() for every param_scheduler",
    }
    head = case["model"]["decode_head"]
    extra = {
        "mmseg_model_cfg": case["model"],
        "data_preprocessor": case["model"]["data_preprocessor"],
        "align_corners": (head[-1] if isinstance(head, list) else head)["align_corners"],
        "optim_wrapper": case["optim_wrapper"],
        "param_scheduler": case["param_scheduler"],
    }
    run_case(name, case, _train_mmseg, reference, extra, seed, out, case.get("spread_runs", 2))


def _readme(name: str, case: dict, config: dict) -> str:
    tol = case["tolerances"]
    rows = "\n".join(
        f"| `{k}` | {what} | atol={tol[k][0]:g}, rtol={tol[k][1]:g}, spread={tol[k][2]:g} |"
        for k, what in [
            ("loss", "every loss term and the total, per iteration"),
            ("grad_norm", "global gradient norm (before the step), per iteration"),
            ("param", "every final parameter (max abs diff per tensor; rtol x max |ref| of the tensor)"),
            ("buffer", "every final float buffer (BN running stats); num_batches_tracked exact"),
            ("optim", case.get("optim_what", "every optimizer state tensor (SGD momentum_buffer)")),
            *[(k, what) for k, what in case.get("tolerance_what", {}).items()],
        ]
    )
    changes = "\n".join(f"- {c}" for c in case["changes"])
    how = case.get("reference_text") or (
        "its optim_wrapper and\nparam_scheduler are built by mmengine's own builders and stepped as\n"
        f"IterBasedTrainLoop + ParamSchedulerHook do (`{config['reference']['loop']}`),\n"
        f"{config['iters']} iterations, seed {config['seed']}.\n"
        "Initial weights: mmseg's own `init_weights()` after `torch.manual_seed(seed)`."
    )
    return f"""# {name}

Reference: {config["reference"]["code"]} {config["reference"]["version"]} (torch {config["reference"]["torch"]}, CPU,
float32, one thread), official config `{config["reference"]["config"]}`; {how}

Changes from the official config (tiny width, same structure):

{changes}

ctxseg side: recipe `{case["ctxseg"]["recipe"]}` with the tiny model of `{case["ctxseg"]["model_from"]}` and the
overrides {case["ctxseg"]["overrides"]}; the Trainer's own optimizer, param groups, lr schedule, loss and step.

## Tolerances

|ours - ref| <= atol + rtol * |ref| + spread_factor * spread.

| quantity | what | tolerance |
| --- | --- | --- |
{rows}
| lr | every parameter's lr (and weight decay, where recorded: exact), every iteration | relative 1e-12 |

{case["tolerance_notes"]}
"""


def runners() -> dict:
    """case name -> run(name, seed, iters, out). The mmseg cases are here; each other official code base
    has its own module beside this file (`ref_<code>.py` with `CASES` and `run`), imported on use."""
    out = {name: run_mmseg for name in CASES}
    here = Path(__file__).resolve().parent
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))
    for path in sorted(here.glob("ref_*.py")):
        mod = importlib.import_module(path.stem)
        out.update({name: mod.run for name in mod.CASES})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="print the case names")
    ap.add_argument("--case", action="append", help="case name (repeatable); default: every case")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("cases"))
    args = ap.parse_args(argv)
    cases = runners()
    if args.list:
        print("\n".join(cases))
        return 0
    for name in args.case or list(cases):
        if name not in cases:
            ap.error(f"unknown case {name!r}; --list prints the cases")
        cases[name](name, args.seed, args.iters, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
