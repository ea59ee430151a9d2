#!/usr/bin/env python3
"""Schedule and param-group goldens: the official optimizer constructors and lr schedulers, per recipe.

For every bundled recipe whose provenance row (recipes/provenance/official.toml) names an official
config, this builds, with the official code (see README.md for the environment):

  * the official optimizer from the official config, over the FULL-SIZE official model (mmseg 1.2.2:
    mmengine's optimizer-wrapper constructor with the config's paramwise_cfg; the CAC fork: mmcv 1.x's
    DefaultOptimizerConstructor; sssegmentation 1.7.0: BuildOptimizer with its params_rules;
    ContrastiveSeg: the trainer's `_get_parameters` (backbone / not-backbone x nbb_mult)), and records,
    for every parameter (official name), its lr multiplier (group lr / base lr) and weight-decay
    multiplier (group weight decay / base weight decay), plus every state-dict shape (the test maps
    official names to ctxseg names through ctxseg's converter key maps, fix-ups included);
  * the official scheduler objects from the official config (mmengine PolyLR / LinearLR with
    by_epoch=False, stepped after every iteration as ParamSchedulerHook does; mmcv 1.x
    PolyLrUpdaterHook before every iteration; sssegmentation's PolyScheduler.updatelr with
    iters_per_epoch = len(its distributed train loader); ContrastiveSeg's lambda_poly LambdaLR stepped
    with the iteration, plus its warm_lr when the config switches warm-up on), run over the full
    budget on an optimizer with one group per distinct initial (lr, weight decay) of the official
    optimizer, and records the lr of each group at every iteration.

Output (--out DIR): DIR/<recipe>.json per recipe, DIR/curves/<sha>.npz (deduplicated curves: the lr
at every iteration of the warm-up, the first and last 1000 iterations and every k-th, float64, plus
the sha256 of the float64 array of ALL iterations, so a test can check the whole curve bit for bit),
DIR/params/<sha>.json.gz (deduplicated parameter tables). Deterministic: --seed only seeds the
(unused by the result) model initialisation and is recorded.

Usage:
    python generate_schedules.py --list
    python generate_schedules.py --all --out tests/golden_train/schedules
    python generate_schedules.py --recipe upernet-swin-t-ade20k-160k --out /tmp/sched
Options/environment for the official code: --mmseg-configs ($CTXSEG_MMSEG_CONFIGS, default: the
configs shipped inside the mmsegmentation 1.2.2 wheel), --cac-repo ($CTXSEG_CAC_REPO, git dir of
tianzhuotao/CAC), --cac-mmcv ($CTXSEG_CAC_MMCV, folder holding pure-python mmcv 1.7.2),
--contrast-repo ($CTXSEG_CONTRAST_REPO, git dir of tfzhou/ContrastiveSeg), --ssseg-repo
($CTXSEG_SSSEG_REPO, git dir of SegmentationBLWX/sssegmentation) with --ssseg-rev (eb1878c1).
Each code base runs in its own subprocess (mmseg 1.x and the CAC fork are both called `mmseg`).
The generator contains no code of the official repositories; it builds their classes from their
configs and calls them.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import types
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PROVENANCE = REPO / "recipes" / "provenance" / "official.toml"
DENSE_EDGE = 1000  # every iteration of the first and last DENSE_EDGE iterations is stored
STRIDE = 50  # and every STRIDE-th in between (plus the warm-up, densely)
SSSEG_REV = "eb1878c1"
# train-split sizes of the datasets the sssegmentation recipes train on (the official loaders' file
# lists; the same counts as ctxseg/data/prepare/*.py SPLITS) -> iters_per_epoch = len(train loader)
SSSEG_TRAIN_SIZES = {"ade20k": 20210, "cityscapes": 2975, "cocostuff10k": 9000, "lip": 30462}

FAMILIES = {
    "open-mmlab/mmsegmentation": "mmseg",
    "tianzhuotao/CAC": "cac",
    "tfzhou/ContrastiveSeg": "openseg",
    "SegmentationBLWX/sssegmentation": "ssseg",
}


# ---------------------------------------------------------------------------------------------
# recipe rows
def official_rows() -> dict[str, dict]:
    """recipe name -> {family, config (path inside the official repository), row}."""
    table = tomllib.loads(PROVENANCE.read_text())
    rows = {}
    for name, row in table.get("recipes", {}).items():
        config = row.get("config", "")
        repo = config.split()[0].split("@")[0]
        if repo not in FAMILIES:
            continue
        rows[name] = {"family": FAMILIES[repo], "config": config, "path": config.split()[1]}
    return rows


# ---------------------------------------------------------------------------------------------
# shared recording
def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr, dtype="<f8").tobytes()).hexdigest()


def sample_indices(n: int, warmup: int) -> np.ndarray:
    keep = np.zeros(n, bool)
    keep[: min(n, max(DENSE_EDGE, warmup + 2))] = True
    keep[max(0, n - DENSE_EDGE) :] = True
    keep[::STRIDE] = True
    return np.nonzero(keep)[0]


def write_curve(out: Path, lr: np.ndarray, warmup: int) -> str:
    sha = _sha(lr)
    path = out / "curves" / f"{sha[:16]}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        idx = sample_indices(len(lr), warmup)
        buf = io.BytesIO()
        np.savez_compressed(buf, iters=idx.astype(np.int32), lr=lr[idx].astype("<f8"), n=np.int64(len(lr)))
        path.write_bytes(buf.getvalue())
    return sha


def write_params(out: Path, params: dict, buffers: dict) -> str:
    blob = json.dumps({"params": params, "buffers": buffers}, sort_keys=True, separators=(",", ":")).encode()
    sha = hashlib.sha256(blob).hexdigest()
    path = out / "params" / f"{sha[:16]}.json.gz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(blob, mtime=0))
    return sha


def param_table(model, optimizer, base_lr: float, base_wd: float) -> tuple[dict, dict]:
    """name -> [lr multiplier, decay multiplier, shape] from the official optimizer's groups."""
    by_id = {}
    defaults = optimizer.defaults
    for g in optimizer.param_groups:
        lr = g.get("lr", defaults["lr"])
        wd = g.get("weight_decay", defaults.get("weight_decay", 0.0))
        for p in g["params"]:
            by_id[id(p)] = (lr / base_lr, (wd / base_wd) if base_wd else 0.0)
    params, seen = {}, set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in by_id or not p.requires_grad:
            continue  # frozen / never optimised (the test compares trainable parameters)
        seen.add(id(p))
        lm, dm = by_id[id(p)]
        params[name] = [lm, dm, list(p.shape)]
    buffers = {name: list(b.shape) for name, b in model.named_buffers()}
    return params, buffers


def norm_table(model) -> dict:
    """Module name -> the kind of normalisation layer the official model builds there."""
    import torch

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.SyncBatchNorm):
            out[name] = "SyncBN"
        elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            out[name] = "BN"
        elif isinstance(m, torch.nn.LayerNorm):
            out[name] = "LN"
        elif isinstance(m, torch.nn.GroupNorm):
            out[name] = "GN"
    return out


def add_norms(out: Path, name: str, model) -> bool:
    """--norms-only: add the norm table to an existing case file (no schedule run)."""
    path = out / f"{name}.json"
    case = json.loads(path.read_text())
    case["norms"] = norm_table(model)
    path.write_text(json.dumps(case, indent=1) + "\n")
    print(f"{name}: {len(case['norms'])} norm layers", flush=True)
    return True


def distinct_groups(optimizer) -> list[tuple[float, float]]:
    """The distinct (initial lr, weight decay) pairs of the official optimizer, in group order."""
    out = []
    for g in optimizer.param_groups:
        key = (g.get("lr", optimizer.defaults["lr"]), g.get("weight_decay", optimizer.defaults.get("weight_decay", 0)))
        if key not in out:
            out.append(key)
    return out


def record(out: Path, name: str, meta: dict, model, optimizer, base_lr, base_wd, curves, warmup: int) -> dict:
    params, buffers = param_table(model, optimizer, base_lr, base_wd)
    groups = []
    for (lr0, wd0), curve in curves:
        groups.append(
            {
                "initial_lr": lr0,
                "lr_mult": lr0 / base_lr,
                "weight_decay": wd0,
                "curve": write_curve(out, np.asarray(curve, dtype=np.float64), warmup)[:16],
                "curve_sha256": _sha(np.asarray(curve, dtype=np.float64)),
                "params": sum(
                    1
                    for v in params.values()
                    if abs(v[0] * base_lr - lr0) <= 1e-15 * abs(lr0) and abs(v[1] * base_wd - wd0) <= 1e-15 * abs(wd0)
                ),
            }
        )
    case = {
        "recipe": name,
        **meta,
        "base_lr": base_lr,
        "base_weight_decay": base_wd,
        "iters": len(curves[0][1]),
        "warmup_iters": warmup,
        "groups": groups,
        "param_table": write_params(out, params, buffers)[:16],
        "trainable_params": len(params),
        "norms": norm_table(model),
        "storage": {"dense_edge": DENSE_EDGE, "stride": STRIDE},
    }
    (out / f"{name}.json").write_text(json.dumps(case, indent=1) + "\n")
    print(f"{name}: {len(params)} params, {len(groups)} lr group(s), {case['iters']} iters", flush=True)
    return case


class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})


def _stub_mmcv_ops():
    try:
        importlib.import_module("mmcv.ops")
    except Exception:  # noqa: BLE001 - mmcv-lite: no compiled ops (unused by these models)
        for k in [k for k in sys.modules if k == "mmcv.ops" or k.startswith("mmcv.ops.")]:
            del sys.modules[k]
        sys.modules["mmcv.ops"] = _Stub("mmcv.ops")


def _no_pretrained(cfg):
    """Drop pretrained paths / init_cfg (no download; the constructors do not read weights)."""
    if isinstance(cfg, dict):
        for k in list(cfg):
            if k in ("pretrained", "init_cfg"):
                cfg[k] = None
            else:
                _no_pretrained(cfg[k])
    elif isinstance(cfg, list):
        for v in cfg:
            _no_pretrained(v)


def export_tree(git_dir: str, rev: str = "HEAD") -> str:
    dest = tempfile.mkdtemp(prefix="official_")
    archive = subprocess.run(["git", "--git-dir", git_dir, "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "x", "-C", dest], input=archive, check=True)
    return dest


# ---------------------------------------------------------------------------------------------
# mmsegmentation 1.2.2 (mmengine)
def gen_mmseg(names, rows, out, args):
    import torch

    warnings.filterwarnings("ignore")
    _stub_mmcv_ops()
    import logging

    import mmengine
    from mmengine.logging import MMLogger

    MMLogger.get_instance("mmengine").setLevel(logging.WARNING)
    import mmseg
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    cfg_root = Path(args.mmseg_configs or Path(mmseg.__file__).parent / ".mim")
    for name in names:
        cfg = Config.fromfile(str(cfg_root / rows[name]["path"]))
        model_cfg = copy.deepcopy(cfg.model.to_dict())
        _no_pretrained(model_cfg)
        torch.manual_seed(args.seed)
        model = MODELS.build(model_cfg)
        if args.norms_only and add_norms(out, name, model):
            continue
        ow_cfg = cfg.optim_wrapper.to_dict()
        ow = build_optim_wrapper(model, copy.deepcopy(ow_cfg))
        base_lr, base_wd = ow_cfg["optimizer"]["lr"], ow_cfg["optimizer"].get("weight_decay", 0.0)
        total = cfg.train_cfg["max_iters"]
        # the schedule on an optimizer with one group per distinct (lr, wd) of the official one
        keys = distinct_groups(ow.optimizer)
        dummy = [torch.nn.Parameter(torch.zeros(1)) for _ in keys]
        small_cfg = copy.deepcopy(ow_cfg)
        small_cfg.pop("paramwise_cfg", None)
        holder = torch.nn.Module()
        for i, p in enumerate(dummy):
            holder.register_parameter(f"p{i}", p)
        sow = build_optim_wrapper(holder, small_cfg)
        sow.optimizer.param_groups.clear()
        for p, (lr0, wd0) in zip(dummy, keys):
            sow.optimizer.add_param_group({"params": [p], "lr": lr0, "weight_decay": wd0})
        scheds = []
        for s in cfg.param_scheduler:
            s = copy.deepcopy(dict(s))
            assert not s.get("by_epoch", True), f"{name}: epoch-based scheduler {s}"
            scheds.append(PARAM_SCHEDULERS.build(s, default_args=dict(optimizer=sow)))
        lrs = np.zeros((len(keys), total))
        for it in range(total):
            for gi, g in enumerate(sow.optimizer.param_groups):
                lrs[gi, it] = g["lr"]
            for s in scheds:  # ParamSchedulerHook.after_train_iter
                s.step()
        warm = max((s.get("end", 0) for s in cfg.param_scheduler if s["type"] == "LinearLR"), default=0)
        meta = {
            "family": "mmseg",
            "official_config": rows[name]["config"],
            "reference": f"mmsegmentation {mmseg.__version__}, mmengine {mmengine.__version__}",
            "optimizer": ow_cfg["optimizer"]["type"],
            "param_scheduler": [dict(s) for s in cfg.param_scheduler],
            "paramwise_cfg": ow_cfg.get("paramwise_cfg"),
        }
        record(out, name, meta, model, ow.optimizer, base_lr, base_wd, list(zip(keys, lrs)), warm)


# ---------------------------------------------------------------------------------------------
# CAC fork (mmseg 0.x on mmcv 1.x)
def import_cac_fork(git_dir: str, mmcv_dir: str | None) -> tuple[str, str]:
    """Make the CAC fork importable as `mmseg` (on mmcv 1.x) in this process: export the fork's
    tree from its git dir, put it and the pure-python mmcv 1.7.2 folder first on sys.path, stub
    mmcv.ops / einops, and import mmseg with the fork's mmcv<=1.5.0 check bypassed. Returns (the
    exported tree, the real mmcv version). Call it before anything imports mmseg 1.x / mmcv 2.x."""
    src = export_tree(git_dir)
    if mmcv_dir:
        sys.path.insert(0, os.path.abspath(mmcv_dir))
    sys.path.insert(0, src)
    import mmcv

    _stub_mmcv_ops()
    try:
        import einops.layers.torch  # noqa: F401
    except Exception:  # noqa: BLE001
        for n in ("einops", "einops.layers", "einops.layers.torch"):
            sys.modules[n] = _Stub(n)
    real = mmcv.__version__
    mmcv.__version__ = "1.5.0"  # the fork's import-time mmcv<=1.5.0 check only
    try:
        import mmseg  # noqa: F401
    finally:
        mmcv.__version__ = real
    return src, real


def gen_cac(names, rows, out, args):
    import torch

    warnings.filterwarnings("ignore")
    if not args.cac_repo:
        raise SystemExit("--cac-repo (or $CTXSEG_CAC_REPO) is required for the CAC recipes")
    src, real = import_cac_fork(args.cac_repo, args.cac_mmcv)
    import mmcv
    from mmcv.runner import HOOKS, build_optimizer
    from mmcv.utils import build_from_cfg
    from mmseg.models import build_segmentor

    for name in names:
        cfg = mmcv.Config.fromfile(os.path.join(src, rows[name]["path"]))
        model_cfg = copy.deepcopy(cfg.model)
        _no_pretrained(model_cfg)
        torch.manual_seed(args.seed)
        model = build_segmentor(model_cfg)
        if args.norms_only and add_norms(out, name, model):
            continue
        opt_cfg = copy.deepcopy(cfg.optimizer)
        optimizer = build_optimizer(model, opt_cfg)
        base_lr, base_wd = cfg.optimizer["lr"], cfg.optimizer.get("weight_decay", 0.0)
        total = cfg.runner["max_iters"]
        keys = distinct_groups(optimizer)
        dummy = [torch.nn.Parameter(torch.zeros(1)) for _ in keys]
        small = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)  # only holds the lrs
        small.param_groups.clear()
        for p, (lr0, wd0) in zip(dummy, keys):
            small.add_param_group({"params": [p], "lr": lr0, "weight_decay": wd0})
        lr_cfg = copy.deepcopy(dict(cfg.lr_config))
        policy = lr_cfg.pop("policy")
        lr_cfg["type"] = policy.title() + "LrUpdaterHook"  # mmcv Runner.register_lr_hook
        hook = build_from_cfg(lr_cfg, HOOKS)
        runner = types.SimpleNamespace(optimizer=small, iter=0, epoch=0, max_iters=total, max_epochs=None)
        hook.before_run(runner)
        lrs = np.zeros((len(keys), total))
        for it in range(total):
            runner.iter = it
            hook.before_train_iter(runner)
            for gi, g in enumerate(small.param_groups):
                lrs[gi, it] = g["lr"]
        meta = {
            "family": "cac",
            "official_config": rows[name]["config"],
            "reference": f"tianzhuotao/CAC {args.cac_commit} on mmcv {real}",
            "optimizer": cfg.optimizer["type"],
            "lr_config": dict(cfg.lr_config),
            "paramwise_cfg": cfg.optimizer.get("paramwise_cfg"),
        }
        record(out, name, meta, model, optimizer, base_lr, base_wd, list(zip(keys, lrs)), lr_cfg.get("warmup_iters", 0))


# ---------------------------------------------------------------------------------------------
# sssegmentation 1.7.0 (official configs of the pinned commit)
def ssseg_environment():
    """Import sssegmentation 1.7.0 with the two defects of its wheel that stop some official configs from
    building patched (HRModule.use_checkpoint default, ViT-L drop_rate assert; no effect on names or on
    the models that build without them). Also used by ref_ssseg.py (the step-by-step golden)."""
    import ssseg
    from ssseg.modules.models.backbones import hrnet as ssseg_hrnet
    from ssseg.modules.models.backbones import vit as ssseg_vit

    ssseg_hrnet.HRModule.use_checkpoint = False
    ssseg_vit.AUTO_ASSERT_STRUCTURE_TYPES["jx_vit_large_p16_384"]["drop_rate"] = 0.0
    return ssseg


def configs_on_path(git_dir: str, rev: str = SSSEG_REV) -> Path:
    """Export the official repository at `rev` and put its `ssseg/` folder on sys.path, so that
    `importlib.import_module("configs.<group>.<name>")` reads the official config files."""
    cfg_dir = Path(export_tree(git_dir, rev)) / "ssseg"
    sys.path.insert(0, str(cfg_dir))
    return cfg_dir


def gen_ssseg(names, rows, out, args):
    import torch
    import torch.distributed as dist

    warnings.filterwarnings("ignore")
    if not args.ssseg_repo:
        raise SystemExit("--ssseg-repo (or $CTXSEG_SSSEG_REPO) is required for the sssegmentation recipes")
    ssseg = ssseg_environment()
    from ssseg.modules import BuildOptimizer, BuildScheduler, BuildSegmentor
    from ssseg.modules.parallel.dataloader import BuildDistributedDataloader

    configs_on_path(args.ssseg_repo, args.ssseg_rev)
    for name in names:
        mod = rows[name]["path"][len("ssseg/configs/") :].removesuffix(".py").replace("/", ".")
        cfg = copy.deepcopy(importlib.import_module(f"configs.{mod}").SEGMENTOR_CFG)
        cfg["backbone"]["pretrained"] = False
        # the commit's HRNet flag `mcibi_version` only skips a ReLU in forward (no parameter); the 1.7.0
        # wheel's HRNet does not know it
        cfg["backbone"].pop("mcibi_version", None)
        torch.manual_seed(args.seed)
        model = BuildSegmentor(segmentor_cfg=cfg, mode="TRAIN")
        if args.norms_only and add_norms(out, name, model):
            continue
        opt_cfg = cfg["scheduler"]["optimizer"]
        optimizer = BuildOptimizer(model, copy.deepcopy(opt_cfg))
        base_lr, base_wd = opt_cfg["lr"], opt_cfg.get("weight_decay", 0.0)
        # len(train loader) as ssseg's train.py builds it: DistributedSampler over the processes
        dataset_name = cfg["dataset"]["type"].lower().removesuffix("dataset")
        n_train = SSSEG_TRAIN_SIZES[dataset_name]
        dl_cfg = copy.deepcopy(cfg["dataloader"])
        world = dl_cfg["expected_total_train_bs_for_assert"] // dl_cfg["train"]["batch_size_per_gpu"]
        train_cfg = dl_cfg["train"]
        train_cfg["batch_size"] = train_cfg.pop("batch_size_per_gpu")
        train_cfg.pop("num_workers_per_gpu")
        train_cfg["num_workers"] = 0
        patched = {k: getattr(dist, k) for k in ("is_available", "is_initialized", "get_world_size", "get_rank")}
        dist.is_available, dist.is_initialized = (lambda: True), (lambda: True)
        dist.get_world_size, dist.get_rank = (lambda *a: world), (lambda *a: 0)
        try:
            iters_per_epoch = len(BuildDistributedDataloader(dataset=list(range(n_train)), dataloader_cfg=train_cfg))
        finally:
            for k, v in patched.items():
                setattr(dist, k, v)
        keys = distinct_groups(optimizer)
        holder = torch.nn.Linear(1, 1, bias=False)
        small = BuildOptimizer(holder, {**copy.deepcopy(opt_cfg), "params_rules": {}})
        small.param_groups.clear()
        for lr0, wd0 in keys:
            group = {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr0, "weight_decay": wd0}
            # PolyScheduler.updatelr sets lr = group['lr_multiplier'] x target: the replay group must carry
            # the multiplier the real group got from params_rules (without it every group runs at x1)
            real = next(
                g for g in optimizer.param_groups if (g.get("lr", base_lr), g.get("weight_decay", 0.0)) == (lr0, wd0)
            )
            if "lr_multiplier" in real:
                group["lr_multiplier"] = real["lr_multiplier"]
            small.add_param_group(group)
        sch_cfg = copy.deepcopy(cfg["scheduler"])
        sch_cfg.update(
            {"lr": opt_cfg["lr"], "iters_per_epoch": iters_per_epoch, "params_rules": opt_cfg["params_rules"]}
        )
        scheduler = BuildScheduler(optimizer=small, scheduler_cfg=sch_cfg)
        total = scheduler.max_iters
        lrs = np.zeros((len(keys), total))
        for it in range(total):
            scheduler.updatelr()  # train.py: before every iteration
            for gi, g in enumerate(small.param_groups):
                lrs[gi, it] = g["lr"]
            scheduler.step()
        warm = (sch_cfg.get("warmup_cfg") or {}).get("iters", 0)
        meta = {
            "family": "ssseg",
            "official_config": rows[name]["config"],
            "reference": f"sssegmentation {ssseg.__version__}, configs of {args.ssseg_rev}",
            "optimizer": opt_cfg["type"],
            "scheduler": {k: v for k, v in cfg["scheduler"].items() if k != "optimizer"},
            "params_rules": opt_cfg.get("params_rules"),
            "num_train": n_train,
            "processes": world,
            "iters_per_epoch": iters_per_epoch,
        }
        record(out, name, meta, model, optimizer, base_lr, base_wd, list(zip(keys, lrs)), warm)


# ---------------------------------------------------------------------------------------------
# ContrastiveSeg (openseg)
def _script_args(text: str) -> dict:
    """The `--key value` options of the official run script's train command and its shell variables."""
    env, opts = {}, {}
    for line in text.splitlines():
        s = line.strip()
        if "=" in s and s.split("=", 1)[0].isidentifier() and not s.startswith("--"):
            k, v = s.split("=", 1)
            env[k] = v.strip('"').strip("'")
    tokens = text.replace("\\\n", " ").split()
    train_cmd = False
    for i, t in enumerate(tokens):
        if t == "train":
            train_cmd = True
        if t.startswith("--") and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            v = tokens[i + 1]
            if v.startswith("${") and v.endswith("}"):
                v = env.get(v[2:-1], v)
            opts.setdefault(t[2:], v)
    del train_cmd
    return opts


# Rows whose own official files do not name the network the recipe (and the paper) trains. CamVid has
# no run script, and its jsons' `network` blocks name a ResNet-101 OCNet (deepbase_resnet101_dilated8 +
# asp_ocnet / base_ocnet: a leftover, the files are named H_48_D_4, i.e. HRNet-W48 at stride 4);
# COCO-Stuff and PASCAL-Context have CE scripts only (--model_name hrnet_w48, fs_ce_loss), which build
# no projection head. These rows take the network options (backbone, model_name) from the
# Cityscapes HRNet-W48 script of the same method; everything else from their own script and json.
NETWORK_SCRIPT = {
    "ce-hrnet48-camvid": "scripts/cityscapes/hrnet/run_h_48_d_4.sh",
    "contrast-hrnet48-camvid": "scripts/cityscapes/hrnet/run_h_48_d_4_contrast.sh",
    "contrast-hrnet48-camvid-mem": "scripts/cityscapes/hrnet/run_h_48_d_4_contrast_mem.sh",
    "contrast-hrnet48-cocostuff10k": "scripts/cityscapes/hrnet/run_h_48_d_4_contrast.sh",
    "contrast-hrnet48-pascal-context": "scripts/cityscapes/hrnet/run_h_48_d_4_contrast.sh",
}
NETWORK_OPTIONS = ("backbone", "model_name")  # the loss follows from the model name


def gen_openseg(names, rows, out, args):
    import torch

    warnings.filterwarnings("ignore")
    if not args.contrast_repo:
        raise SystemExit("--contrast-repo (or $CTXSEG_CONTRAST_REPO) is required for the ContrastiveSeg recipes")
    src = export_tree(args.contrast_repo)
    sys.path.insert(0, src)
    if args.contrast_pypath:
        sys.path.insert(0, os.path.abspath(args.contrast_pypath))
    for n in ("torchcontrib", "torchcontrib.optim"):  # imported by optim_scheduler for the SWA policies only
        sys.modules.setdefault(n, _Stub(n))
    from lib.models.model_manager import ModelManager
    from lib.utils.tools.configer import Configer
    from segmentor.tools.optim_scheduler import OptimScheduler

    # the training method that groups the parameters: read from the trainer module without running
    # its imports of data loaders (compile only that function from the official source)
    trainer_src = (Path(src) / "segmentor" / "trainer_contrastive.py").read_text()
    import ast

    tree = ast.parse(trainer_src)
    fn = next(
        n
        for c in tree.body
        if isinstance(c, ast.ClassDef)
        for n in c.body
        if isinstance(n, ast.FunctionDef) and n.name == "_get_parameters"
    )
    ns: dict = {}
    exec(compile(ast.Module([fn], []), "trainer_contrastive.py", "exec"), ns)  # noqa: S102
    get_parameters = ns["_get_parameters"]

    for name in names:
        cfg_rel = rows[name]["config"].split("+")[-1].split()[0] if "+" in rows[name]["config"] else None
        parts = rows[name]["config"].split()
        script = next((p for p in parts if p.startswith("scripts/")), None)
        json_path = next(p for p in parts if p.startswith("configs/")).rstrip(",;")
        del cfg_rel
        opts = _script_args((Path(src) / script).read_text()) if script else {}
        network_script = NETWORK_SCRIPT.get(name)
        if network_script:
            network = _script_args((Path(src) / network_script).read_text())
            opts.update({k: network[k] for k in NETWORK_OPTIONS if k in network})
        d = json.loads((Path(src) / json_path).read_text())
        # the command-line defaults of main_contrastive.py that decide the schedule (Configer: a
        # default that is not None replaces the json value): --is_warm False, --nbb_mult 1.0
        d.setdefault("lr", {})
        d["lr"]["is_warm"] = opts.get("is_warm", "False").lower() in ("true", "1", "yes", "y")
        d["lr"]["nbb_mult"] = float(opts.get("nbb_mult", 1.0))
        if "max_iters" in opts:
            d["solver"]["max_iters"] = int(opts["max_iters"])
        if "base_lr" in opts:
            d["lr"]["base_lr"] = float(opts["base_lr"])
        model_name = opts.get("model_name", d["network"].get("model_name"))
        d["network"]["model_name"] = model_name
        d["network"]["backbone"] = opts.get("backbone", d["network"].get("backbone"))
        d["network"].pop("pretrained", None)
        d["network"]["pretrained"] = None
        d.setdefault("gpu", [0])
        d["network"].setdefault("resume", None)
        d["network"]["resume"] = None
        configer = Configer(config_dict=d)
        torch.manual_seed(args.seed)
        seg_net = ModelManager(configer).semantic_segmentor()
        if args.norms_only and add_norms(out, name, seg_net):
            continue
        holder = types.SimpleNamespace(seg_net=seg_net, configer=configer)
        optimizer, _ = OptimScheduler(configer).init_optimizer(get_parameters(holder))
        base_lr = d["lr"]["base_lr"]
        base_wd = d["optim"][d["optim"]["optim_method"]]["weight_decay"]
        total = d["solver"]["max_iters"]
        keys = distinct_groups(optimizer)
        small_groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr0} for lr0, _ in keys]
        small, scheduler = OptimScheduler(configer).init_optimizer(small_groups)
        warm_iters = d["lr"].get("warm", {}).get("warm_iters", 0) if d["lr"]["is_warm"] else 0
        lrs = np.zeros((len(keys), total))
        from segmentor.tools.module_runner import ModuleRunner

        runner = ModuleRunner.__new__(ModuleRunner)
        runner.configer = configer
        for it in range(total):
            configer.update(["iters"], it) if configer.exists("iters") else configer.add(["iters"], it)
            scheduler.step(it)  # trainer: self.scheduler.step(self.configer.get('iters')), metric 'iters'
            if d["lr"]["is_warm"]:
                runner.warm_lr(it, scheduler, small, backbone_list=[0])
            for gi, g in enumerate(small.param_groups):
                lrs[gi, it] = g["lr"]
        meta = {
            "family": "openseg",
            "official_config": rows[name]["config"],
            "reference": f"tfzhou/ContrastiveSeg {args.contrast_commit}",
            "network": {k: d["network"][k] for k in ("backbone", "model_name")},
            "network_from": network_script or script or json_path,
            "optimizer": d["optim"]["optim_method"],
            "lr": d["lr"],
            "max_iters": total,
        }
        record(out, name, meta, seg_net, optimizer, base_lr, base_wd, list(zip(keys, lrs)), warm_iters)


GENERATORS = {"mmseg": gen_mmseg, "cac": gen_cac, "ssseg": gen_ssseg, "openseg": gen_openseg}


def _commit(git_dir, rev="HEAD"):
    if not git_dir:
        return None
    return subprocess.run(
        ["git", "--git-dir", git_dir, "rev-parse", rev], capture_output=True, text=True, check=True
    ).stdout.strip()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print the recipes (and their code base) and exit")
    p.add_argument("--recipe", action="append", default=[], help="a recipe name (repeatable)")
    p.add_argument("--all", action="store_true", help="every bundled recipe with an official config")
    p.add_argument("--out", type=Path, help="output folder (e.g. tests/golden_train/schedules)")
    p.add_argument("--seed", type=int, default=0, help="seed of the (irrelevant) model initialisation")
    p.add_argument("--family", help=argparse.SUPPRESS)
    p.add_argument("--norms-only", action="store_true", help="only add the norm-layer table to existing cases")
    p.add_argument("--mmseg-configs", default=os.environ.get("CTXSEG_MMSEG_CONFIGS"))
    p.add_argument("--cac-repo", default=os.environ.get("CTXSEG_CAC_REPO"))
    p.add_argument("--cac-mmcv", default=os.environ.get("CTXSEG_CAC_MMCV"))
    p.add_argument("--contrast-repo", default=os.environ.get("CTXSEG_CONTRAST_REPO"))
    p.add_argument("--contrast-pypath", default=os.environ.get("CTXSEG_CONTRAST_PYPATH"), help="folder with yacs")
    p.add_argument("--ssseg-repo", default=os.environ.get("CTXSEG_SSSEG_REPO"))
    p.add_argument("--ssseg-rev", default=SSSEG_REV)
    args = p.parse_args(argv)
    rows = official_rows()
    if args.list:
        for name, row in sorted(rows.items()):
            print(f"{name}\t{row['family']}\t{row['config']}")
        return
    names = sorted(rows) if args.all else args.recipe
    unknown = [n for n in names if n not in rows]
    if unknown or not names or args.out is None:
        p.error(f"give --out and --recipe NAME (known: --list) or --all; unknown: {unknown}")
    args.out.mkdir(parents=True, exist_ok=True)
    args.cac_commit = _commit(args.cac_repo)
    args.contrast_commit = _commit(args.contrast_repo)
    if args.family:
        GENERATORS[args.family]([n for n in names if rows[n]["family"] == args.family], rows, args.out, args)
        return
    for family in GENERATORS:
        chosen = [n for n in names if rows[n]["family"] == family]
        if not chosen:
            continue
        cmd = [sys.executable, __file__, "--family", family, "--out", str(args.out), "--seed", str(args.seed)]
        cmd += ["--norms-only"] if args.norms_only else []
        for n in chosen:
            cmd += ["--recipe", n]
        for opt in (
            "mmseg_configs",
            "cac_repo",
            "cac_mmcv",
            "contrast_repo",
            "contrast_pypath",
            "ssseg_repo",
            "ssseg_rev",
        ):
            if getattr(args, opt):
                cmd += ["--" + opt.replace("_", "-"), str(getattr(args, opt))]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
