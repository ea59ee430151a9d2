"""Step-by-step training goldens of ContrastiveSeg (tfzhou/ContrastiveSeg, built on openseg.pytorch).

Imported by generate.py (`runners()`); run in the reference environment (tests/golden_train/README.md):

    export CTXSEG_CONTRAST_REPO=<git dir of tfzhou/ContrastiveSeg> CTXSEG_CONTRAST_PYPATH=<folder with yacs>
    python tests/golden_train/generate.py --case openseg-contrast-hrnet48-cityscapes --seed 0 --iters 40 \\
        --out tests/golden_train/cases

The official network, loss, optimizer and scheduler are built by the official classes from the official
config (configs/cityscapes/H_48_D_4.json + the options of scripts/cityscapes/hrnet/run_h_48_d_4_contrast.sh:
hrnet48 backbone, model hrnet_w48_contrast, loss contrast_ce_loss, 40000 iterations, base lr 0.01, and
main_contrastive.py's defaults nbb_mult 1.0, is_warm False), at tiny widths; the loop is the one of
segmentor/trainer_contrastive.py's `__train` in its distributed branch (the script passes --distributed):

    scheduler.step(iters)                               # lambda_poly, metric 'iters', before the forward
    with_embed = iters >= contrast.warmup_iters
    outputs = seg_net(inputs, with_embed=with_embed)
    loss = pixel_loss(outputs, targets, with_embed=with_embed)   # CE + loss_weight x contrast (0 x before)
    optimizer.zero_grad(); loss.backward(); optimizer.step(); iters += 1

Patches applied in memory (nothing else changed): `.cuda()` -> no-op (the loss code calls it on CPU
tensors); torchcontrib stubbed (SWA policies only); `in_channels = 720` of HRNet_W48_CONTRAST -> the tiny
concatenation width, MODEL_CONFIGS['hrnet48'] -> the tiny stages and HighResolutionNet's hard-coded layer1
(4 Bottlenecks of 64 planes) -> LAYER1; every SyncBatchNorm (the backbone and
the projection head hard-code torchsyncbn) -> BatchNorm2d with the same settings; Dropout2d p -> 0.
The script contains no code of the official repository; it imports it and calls its classes.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import types
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = "configs/cityscapes/H_48_D_4.json"
SCRIPT = "scripts/cityscapes/hrnet/run_h_48_d_4_contrast.sh"
CONFIG_MEM = "configs/cityscapes/H_48_D_4_MEM.json"
SCRIPT_MEM = "scripts/cityscapes/hrnet/run_h_48_d_4_contrast_mem.sh"
MEMORY = (12, 4)  # memory_size, pixel_update_freq of the memory variant (official 5000, 10)
TINY_CHANNELS = [4, 8, 16, 32]  # HRNet-W48: 48, 96, 192, 384
LAYER1 = (4, 2)  # layer1 Bottleneck planes and blocks (official, fixed in code: 64, 4)
NUM_CLASSES = 19  # the model's (Cityscapes, official ce_weight); the batches use the first LABEL_CLASSES
LABEL_CLASSES = 5
PROJ_DIM = 16  # official 256


class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})


_ENV: dict = {}


def _env() -> dict:
    """Import the official code (an exported tree of $CTXSEG_CONTRAST_REPO) once, patched as the module
    docstring says. -> {"src": tree, "commit": sha, "Configer", "ModelManager", "OptimScheduler",
    "LossManager", "get_parameters", "script_args"}."""
    if _ENV:
        return _ENV
    import ast

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    from generate_schedules import _commit, _script_args, export_tree

    repo = os.environ.get("CTXSEG_CONTRAST_REPO")
    if not repo:
        sys.exit("set CTXSEG_CONTRAST_REPO to a git dir of tfzhou/ContrastiveSeg (and CTXSEG_CONTRAST_PYPATH: yacs)")
    src = export_tree(repo)
    sys.path.insert(0, src)
    if os.environ.get("CTXSEG_CONTRAST_PYPATH"):
        sys.path.insert(0, os.path.abspath(os.environ["CTXSEG_CONTRAST_PYPATH"]))
    for n in ("torchcontrib", "torchcontrib.optim"):
        sys.modules.setdefault(n, _Stub(n))
    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU run: the loss code calls .cuda() on its tensors

    # HRNet_W48_CONTRAST hard-codes its head width (720 = 48 + 96 + 192 + 384): the tiny concatenation
    hrnet_py = Path(src) / "lib" / "models" / "nets" / "hrnet.py"
    text = hrnet_py.read_text()
    cls_start = text.index("class HRNet_W48_CONTRAST(")
    cls_end = text.index("\nclass ", cls_start + 1)
    body = text[cls_start:cls_end]
    assert body.count("in_channels = 720") == 1, "HRNet_W48_CONTRAST no longer has `in_channels = 720`"
    body = body.replace("in_channels = 720", f"in_channels = {sum(TINY_CHANNELS)}")
    text = text[:cls_start] + body + text[cls_end:]
    # HRNet_W48_MEM's queues: feature dim 256 by a constructor default (ModelManager passes none)
    mem_sig = "def __init__(self, configer, dim=256, m=0.999, with_masked_ppm=False):"
    assert text.count(mem_sig) == 1, "HRNet_W48_MEM's constructor changed"
    text = text.replace(mem_sig, mem_sig.replace("dim=256", f"dim={PROJ_DIM}"))
    hrnet_py.write_text(text)

    # HighResolutionNet hard-codes layer1 (4 Bottlenecks of 64 planes -> 256 channels): LAYER1 of them
    bb_py = Path(src) / "lib" / "models" / "backbones" / "hrnet" / "hrnet_backbone.py"
    text = bb_py.read_text()
    start = text.index("class HighResolutionNet(")
    end = text.index("\nclass ", start + 1)
    body = text[start:end]
    planes, blocks = LAYER1
    assert body.count("self._make_layer(Bottleneck, 64, 64, 4,") == 2 and body.count("([256], num_channels") == 1
    layer1 = f"self._make_layer(Bottleneck, 64, {planes}, {blocks},"
    body = body.replace("self._make_layer(Bottleneck, 64, 64, 4,", layer1)
    body = body.replace("([256], num_channels", f"([{planes * 4}], num_channels")
    bb_py.write_text(text[:start] + body + text[end:])

    from lib.loss.loss_manager import LossManager
    from lib.models.backbones.hrnet import hrnet_config
    from lib.models.model_manager import ModelManager
    from lib.utils.tools.configer import Configer
    from segmentor.tools.optim_scheduler import OptimScheduler

    tiny = hrnet_config.MODEL_CONFIGS["hrnet48"].clone()
    for i, stage in enumerate(("STAGE2", "STAGE3", "STAGE4")):
        s = tiny[stage]
        nb = s.NUM_BRANCHES
        s.NUM_MODULES = 1
        s.NUM_BLOCKS = [1] * nb
        s.NUM_CHANNELS = TINY_CHANNELS[:nb]
        del i
    hrnet_config.MODEL_CONFIGS["hrnet48"] = tiny

    # the trainer's param grouping, compiled alone from the official source (its module imports data loaders)
    tree = ast.parse((Path(src) / "segmentor" / "trainer_contrastive.py").read_text())
    fns = [
        n
        for c in tree.body
        if isinstance(c, ast.ClassDef)
        for n in c.body
        if isinstance(n, ast.FunctionDef) and n.name in ("_get_parameters", "_dequeue_and_enqueue")
    ]
    assert len(fns) == 2, [f.name for f in fns]
    ns: dict = {"torch": torch, "nn": torch.nn}
    exec(compile(ast.Module(fns, []), "trainer_contrastive.py", "exec"), ns)  # noqa: S102
    _ENV.update(
        src=src,
        commit=_commit(repo),
        Configer=Configer,
        ModelManager=ModelManager,
        OptimScheduler=OptimScheduler,
        LossManager=LossManager,
        get_parameters=ns["_get_parameters"],
        dequeue_and_enqueue=ns["_dequeue_and_enqueue"],
        script_args=_script_args,
        hrnet_config=_plain_cfg(tiny),
    )
    return _ENV


def _plain_cfg(node):
    if isinstance(node, dict):
        return {k: _plain_cfg(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain_cfg(v) for v in node]
    return node


def _sync_to_bn(module):
    """Every nn.SyncBatchNorm -> nn.BatchNorm2d with the same settings (one process)."""
    import torch
    from torch import nn

    for name, child in list(module.named_children()):
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            with torch.no_grad():
                bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            _sync_to_bn(child)
    return module


# ------------------------------------------------------------------------------------------------
# cases

NOTES = (
    "Why: float32 sums in another order (ctxseg's fused/vectorised contrast loss, channels-last or NCHW\n"
    "convolutions) differ by ~1e-7 relative per operation. The hard-anchor draws are the official ones:\n"
    'ctxseg\'s default sampler ("official") makes the official `torch.randperm` calls per (image, class),\n'
    "hard then easy, from the default CPU generator, also during the warm-up, and both loops seed that\n"
    "generator with the case seed at iteration 0, so as long as the predictions (hard/easy split) agree\n"
    "the anchors are the same pixels. Measured (seed 0, 40 iterations): iteration 0 (CE only) CE 2.4e-7,\n"
    "grad norm 2.0e-6 relative; iteration 1 (the first with the contrast term) CE 2.5e-7, contrast term\n"
    "1.8e-6, grad norm 1.3e-5. The tiny run is chaotic (batch 2 and 2x2 maps in the lowest branch): a\n"
    "relative 1e-7 perturbation of the official loop's initial weights moves its grad norm by 1.3e-2 at\n"
    "iteration 1 and its losses by ~1e-3 from iteration 2 on (some predictions flip, the hard/easy counts\n"
    "and with them every later randperm draw change); per iteration ctxseg stays within 1.5x the running\n"
    "max of that spread; final tensors: median ratio to their spread 0.71 (parameters), 0.71 (BN\n"
    "buffers), 0.89 (momentum buffers), largest 4.4. Held to: losses rtol 1e-6 + 4x spread, grad norm\n"
    "rtol 2e-5 + 4x spread, final tensors 10x spread each and a median <= 3x per kind (as the OCRNet case).\n"
    "Sensitivity (seed 0): temperature 0.1001, loss_weight 0.1001, base_temperature 0.1 or max_views 29\n"
    "fail at iteration 1 (contrast term); warmup 0 fails at iteration 0, warmup 2 at iteration 1; the\n"
    '"fast" sampler (other draws, same distribution) fails at iteration 1 (contrast 1.1124 vs 1.1191);\n'
    "SGD momentum 0.5 fails at iteration 2."
)

NOTES_MEM = (
    "Why: as the plain case (openseg-contrast-hrnet48-cityscapes): float32 rounding per operation; the\n"
    "hard-anchor draws and the queue updates' `torch.randperm` calls are the official ones (ctxseg's\n"
    '"official" sampler: in one process the queue update draws from the default generator too, in the\n'
    "official order: loss, then queue update), from the same seed. The recipe's own queue update is the\n"
    "official one (official_queue_update = true: stride-8 labels on the stride-4 key map, first K map\n"
    "positions, pixel pointer +1, class 0 never enqueued). Measured (seed 0, 40 iterations): iteration 0 CE\n"
    "2.4e-7, grad norm 2.0e-6 relative; iteration 1 (first contrast term, against the queues after\n"
    "iteration 0's update) CE 2.5e-7, contrast term 3.6e-6, grad norm 2.6e-5; per iteration within 2.0x the\n"
    "running max of the official loop's own spread; final tensors: median ratio to their spread 0.87\n"
    "(parameters), 0.85 (BN buffers and queues), 0.99 (momentum buffers), largest 4.8; the queue pointers\n"
    "(long buffers) are equal exactly. Held to the same tolerances as the plain case. Sensitivity (seed\n"
    "0): official_queue_update=false (the fix), pixel_update_freq 3, queue_skip_class0=false,\n"
    'queue_self_mask=false, temperature 0.0701, the "fast" sampler and warmup 2 all fail at iteration 1;\n'
    "the first two also end with other queue pointers."
)


def case_contrast_hrnet48(iters: int, mem: bool = False) -> dict:
    env = _env()
    src = Path(env["src"])
    config, script = (CONFIG_MEM, SCRIPT_MEM) if mem else (CONFIG, SCRIPT)
    d = json.loads((src / config).read_text())
    opts = env["script_args"]((src / script).read_text())
    official_contrast = dict(d["contrast"])
    # the script's options and main_contrastive.py's defaults that matter here (as generate_schedules.py)
    d["network"]["backbone"] = opts["backbone"]
    d["network"]["model_name"] = opts["model_name"]
    d["loss"]["loss_type"] = opts["loss_type"]
    d["lr"]["base_lr"] = float(opts["base_lr"])
    d["lr"]["is_warm"] = False
    d["lr"]["nbb_mult"] = 1.0
    d["solver"]["max_iters"] = iters  # official 40000 (the poly decay over this run)
    d["network"]["bn_type"] = "torchbn"  # torchsyncbn -> BN (one process)
    d["network"]["pretrained"] = None
    d["network"]["resume"] = None
    d["gpu"] = [0]
    d["network"]["loss_balance"] = opts.get("loss_balance", "y") == "y"  # --loss_balance y (one process: unused)
    d["data"]["num_classes"] = NUM_CLASSES
    warmup = 1
    if mem:
        max_samples, max_views = d["contrast"]["max_samples"], d["contrast"]["max_views"]  # official: 1024, 1
        memory_size, freq = MEMORY
        d["contrast"].update(memory_size=memory_size, pixel_update_freq=freq)
        assert opts["model_name"] == "hrnet_w48_mem" and opts["loss_type"] == "mem_contrast_ce_loss", opts
        assert d["contrast"]["with_memory"] and d["network"]["stride"] == 8, d
    else:
        max_samples, max_views = 256, 30
        assert opts["model_name"] == "hrnet_w48_contrast" and opts["loss_type"] == "contrast_ce_loss", opts
    d["contrast"].update(proj_dim=PROJ_DIM, warmup_iters=warmup, max_samples=max_samples, max_views=max_views)
    assert int(opts["max_iters"]) == 40000 and float(opts["base_lr"]) == 0.01, opts
    c = d["contrast"]
    ch = TINY_CHANNELS
    nc = NUM_CLASSES
    weights = d["loss"]["params"]["ce_weight"]
    return {
        "official_config": f"{config} + {script}",
        "openseg_config": d,
        "shape": {"pool": 4, "batch": 2, "height": 64, "width": 64, "num_classes": LABEL_CLASSES},
        "changes": [
            "bn_type torchsyncbn -> torchbn (one process); the backbone's and projection head's hard-coded "
            "SyncBatchNorm -> BatchNorm2d; no pretrained weights (the constructors' own init, seeded)",
            f"HRNet-W48 branch channels (48,96,192,384) -> {tuple(ch)}, one module and one BasicBlock per stage; "
            f"layer1 (fixed in code: 4 Bottlenecks of 64 planes) -> {LAYER1[1]} of {LAYER1[0]} planes, transition1 "
            f"input 256 -> {LAYER1[0] * 4} (the stem, 64 channels, unchanged); head in_channels 720 -> {sum(ch)}",
            (
                f"contrast proj_dim 256 -> {PROJ_DIM} (HRNet_W48_MEM's queue dim 256, a constructor default, "
                f"-> {PROJ_DIM}); memory_size 5000 -> {MEMORY[0]}, pixel_update_freq 10 -> {MEMORY[1]} (max_samples "
                f"{max_samples}, max_views {max_views}, network stride 8 as official); warmup_iters 5000 -> {warmup}"
                if mem
                else f"contrast proj_dim 256 -> {PROJ_DIM}; max_samples 1024 -> {max_samples}, max_views 100 -> "
                f"{max_views} (64x64 crops: 256 embedding pixels per image); warmup_iters 5000 -> {warmup}"
            )
            + " (the contrast term starts inside the run)",
            "Dropout2d(0.1) of the classifier -> p 0; max_iters 40000 -> iters; crops 1024x512 -> 64x64, "
            f"batch 8 (4 GPUs x 2) -> 2 in one process; the batches use classes 0..{LABEL_CLASSES - 1} of the 19",
            "the global torch RNG (the hard-anchor and queue-update randperm draws) is seeded with the case seed at "
            "the start of "
            "the loop (the official trainer does not reseed; there the state follows the model init and loader)",
            "inputs: images normalised once ((x / 255 - mean) / std, RGB, openseg's normalize), no augmentation",
        ],
        "warmup": warmup,
        # measured (seed 0, 40 iterations): see tolerance_notes
        "tolerances": {
            "loss": (0.0, 1e-6, 4.0),
            "grad_norm": (0.0, 2e-5, 4.0),
            "param": (0.0, 1e-5, 10.0),
            "buffer": (0.0, 1e-5, 10.0),
            "optim": (0.0, 1e-5, 10.0),
        },
        "tolerance_notes": NOTES_MEM if mem else NOTES,
        "ctxseg": {
            "recipe": "contrast-hrnet48-mem" if mem else "contrast-hrnet48",
            "model_from": "openseg_hrnet_contrast",
            "overrides": [
                f"train.iters={iters}",
                "data.batch_size=2",
                f"data.num_classes={nc}",
                "model.head.dropout_ratio=0.0",
                f"model.plugins.pixel_contrast.proj_dim={PROJ_DIM}",
                f"model.plugins.pixel_contrast.warmup={warmup}",
                f"model.plugins.pixel_contrast.max_samples={max_samples}",
                f"model.plugins.pixel_contrast.max_views={max_views}",
                *(
                    [
                        f"model.plugins.pixel_contrast.memory_size={MEMORY[0]}",
                        f"model.plugins.pixel_contrast.pixel_update_freq={MEMORY[1]}",
                    ]
                    if mem
                    else []
                ),
            ],
            "terms": {"seg_ce": "loss_ce", "contrast": "loss_contrast"},
            "weights": "openseg",
            "loop_seed": True,
            "threads": 1,
        },
        "check": {
            "temperature": c["temperature"],
            "base_temperature": c["base_temperature"],
            "loss_weight": c["loss_weight"],
            "ce_weight": weights,
            "official_contrast": official_contrast,
        },
    }


def case_contrast_hrnet48_mem(iters: int) -> dict:
    return case_contrast_hrnet48(iters, mem=True)


CASES = {
    "openseg-contrast-hrnet48-cityscapes": case_contrast_hrnet48,
    "openseg-contrast-hrnet48-mem-cityscapes": case_contrast_hrnet48_mem,
}


# ------------------------------------------------------------------------------------------------
# the official loop


def _inputs(images, labels):
    """uint8 BGR [N,3,H,W] -> openseg's normalised RGB float input; labels 255 -> -1 (openseg's ignore)."""
    import torch

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (images.flip(1).float() / 255.0 - mean) / std
    y = labels.long()
    y[y == 255] = -1
    return x.contiguous(), y


def _train_openseg(case: dict, images, labels, seed: int, perturb: int | None):
    import torch

    env = _env()
    d = copy.deepcopy(case["openseg_config"])
    configer = env["Configer"](config_dict=d)
    torch.manual_seed(seed)
    seg_net = _sync_to_bn(env["ModelManager"](configer).semantic_segmentor())
    for m in seg_net.modules():
        if isinstance(m, torch.nn.Dropout2d):
            m.p = 0.0
    seg_net.train()
    if perturb is not None:
        g = torch.Generator().manual_seed(1000 + perturb)
        with torch.no_grad():
            for p in seg_net.parameters():
                p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=g))
    init = {k: v.detach().clone().contiguous() for k, v in seg_net.state_dict().items()}
    mem = bool(d["contrast"].get("with_memory"))
    holder = types.SimpleNamespace(
        seg_net=seg_net,
        configer=configer,
        network_stride=d["network"]["stride"],
        memory_size=d["contrast"].get("memory_size"),
        pixel_update_freq=d["contrast"].get("pixel_update_freq"),
    )
    optimizer, scheduler = env["OptimScheduler"](configer).init_optimizer(env["get_parameters"](holder))
    pixel_loss = env["LossManager"](configer).get_seg_loss()
    pixel_loss.train()
    names = {id(p): n for n, p in seg_net.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]

    # the loss terms, read where ContrastCELoss computes them
    seen: dict = {}
    seg_fwd, con_fwd = pixel_loss.seg_criterion.forward, pixel_loss.contrast_criterion.forward
    sampling = pixel_loss.contrast_criterion._hard_anchor_sampling

    def seg_rec(*a, **k):
        seen["seg"] = seg_fwd(*a, **k)
        return seen["seg"]

    def con_rec(*a, **k):
        seen["contrast"] = con_fwd(*a, **k)
        return seen["contrast"]

    def sampling_rec(*a, **k):
        x, y = sampling(*a, **k)
        seen["anchors"] = [int(x.shape[0]), int(x.shape[1])] if x is not None else None
        return x, y

    pixel_loss.seg_criterion.forward = seg_rec
    pixel_loss.contrast_criterion.forward = con_rec
    pixel_loss.contrast_criterion._hard_anchor_sampling = sampling_rec

    warmup = d["contrast"]["warmup_iters"]
    weight = d["contrast"]["loss_weight"]
    shp = case["shape"]
    records = []
    torch.manual_seed(seed)  # the loop's RNG: the hard-anchor randperm draws
    for it in range(len(case["iters"])):
        b = it % shp["pool"]
        scheduler.step(it)  # trainer: self.scheduler.step(self.configer.get('iters')), lr metric 'iters'
        lrs = [float(g["lr"]) for g in optimizer.param_groups]
        x, y = _inputs(images[b], labels[b])
        with_embed = it >= warmup
        if mem:  # trainer: the memory branch (with_memory), the queues handed to the loss, then updated
            outputs = seg_net(x, y, with_embed=with_embed)
            for q in ("pixel_queue", "pixel_queue_ptr", "segment_queue", "segment_queue_ptr"):
                outputs[q] = getattr(seg_net, q)
        else:
            outputs = seg_net(x, with_embed=with_embed)
        loss = pixel_loss(outputs, y, with_embed=with_embed)
        if mem and "key" in outputs and "lb_key" in outputs:
            env["dequeue_and_enqueue"](
                holder,
                outputs["key"],
                outputs["lb_key"],
                segment_queue=seg_net.segment_queue,
                segment_queue_ptr=seg_net.segment_queue_ptr,
                pixel_queue=seg_net.pixel_queue,
                pixel_queue_ptr=seg_net.pixel_queue_ptr,
            )
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad.detach() for p in seg_net.parameters() if p.grad is not None]
        grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        optimizer.step()
        contrast = float(seen["contrast"])
        losses = {
            "loss": float(loss),
            "seg_ce": float(seen["seg"]),
            "contrast": (weight if with_embed else 0.0) * contrast,
            "contrast_unweighted": contrast,
        }
        records.append(
            {
                "iter": it,
                "batch": b,
                "lr": lrs,
                "losses": losses,
                "grad_norm": grad_norm,
                "with_embed": with_embed,
                "anchors": seen["anchors"],
            }
        )
        msg = f"{perturb} iter {it}: loss {losses['loss']:.6f} contrast {contrast:.5f} lr {lrs[0]:.6g}"
        print(msg, file=sys.stderr)

    final = {f"state.{k}": v.detach().clone().contiguous() for k, v in seg_net.state_dict().items()}
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                final[f"optim.{names[id(p)]}.{k}"] = v.detach().clone().contiguous()
            elif torch.is_tensor(v) or isinstance(v, (int, float)):
                final[f"optim.{names[id(p)]}.{k}"] = torch.tensor(float(v), dtype=torch.float64)
    return init, records, final, groups, names


def run(name: str, seed: int, iters: int, out: Path) -> None:
    from generate import run_case

    env = _env()
    case = CASES[name](iters)
    case["iters"] = range(iters)
    d = case["openseg_config"]
    case["reference_text"] = (
        f"the official network, ContrastCELoss, SGD and\nlambda_poly scheduler (OptimScheduler) built from "
        "that config, stepped as trainer_contrastive.py's\n`__train` does in its distributed branch "
        "(scheduler.step(iters); forward and loss with\n`with_embed = iters >= warmup_iters`; zero_grad, "
        f"backward, step), {iters} iterations, seed {seed}.\nInitial weights: the official constructors' "
        "init after `torch.manual_seed(seed)`; the loop's\nRNG (hard-anchor `torch.randperm`) seeded with the "
        "seed again at iteration 0."
    )
    reference = {
        "code": "tfzhou/ContrastiveSeg",
        "version": env["commit"],
        "config": case["official_config"],
        "loop": "trainer_contrastive.Trainer.__train (distributed branch)",
    }
    extra = {
        "openseg_config": d,
        "hrnet_config": env["hrnet_config"],
        "model_num_classes": NUM_CLASSES,
        "tiny_channels": TINY_CHANNELS,
        "layer1": {"planes": LAYER1[0], "blocks": LAYER1[1]},
        "check": case["check"],
        "loop_seed": seed,
    }
    run_case(name, case, _train_openseg, reference, extra, seed, out)
