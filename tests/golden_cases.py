"""Golden cases read from the data: discover case folders, build each case's recipe from its own
config.json, read its tolerance from its README. A new case folder is tested without new code
(tests fail loudly on a model type or stored tensor they cannot map, rather than skip it)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.conftest import GOLDEN


def case_folders(prefix: str) -> list[str]:
    """Names of the golden folders `<prefix>*` that hold a config.json (manifest folders have none)."""
    return sorted(p.parent.name for p in GOLDEN.glob(f"{prefix}*/config.json"))


def config(case: str) -> dict[str, Any]:
    return json.loads((GOLDEN / case / "config.json").read_text())


def readme_tolerance(case: str) -> float:
    """The relative tolerance of `max |ours - ref| <= T * max(1, max |ref|)` in the case's README."""
    text = (GOLDEN / case / "README.md").read_text()
    m = re.search(r"max \|ours - ref\| <= ([0-9.eE+-]+) \* max\(1, max \|ref\|\)", text)
    assert m, f"{case}/README.md states no tolerance in the form 'max |ours - ref| <= T * max(1, max |ref|)'"
    return float(m.group(1))


def readme_file_tolerances(folder: Path) -> dict[str, tuple[float, float]]:
    """`file -> (atol, rtol)` from a README table row "| `file.safetensors` | ... | atol=A, rtol=R |"."""
    text = (folder / "README.md").read_text()
    rows = re.findall(r"\|\s*`([\w.]+\.safetensors)`\s*\|.*?\|\s*atol=([0-9.eE+-]+),\s*rtol=([0-9.eE+-]+)\s*\|", text)
    assert rows, f"{folder}/README.md has no per-file tolerance table"
    return {name: (float(a), float(r)) for name, a, r in rows}


# --------------------------------------------------------------------------------------------
# mmseg config.json (mmseg_model_cfg) -> ctxseg recipe


def _mmseg_backbone(cfg: dict) -> dict:
    t = cfg["type"]
    if t == "ResNetV1c":
        # ctxseg's resnet is mmseg's ResNetV1c-D8 (deep stem, strides 1,2,1,1, dilations 1,1,2,4, contract_dilation)
        assert cfg.get("strides", [1, 2, 1, 1]) == [1, 2, 1, 1] and cfg.get("dilations", [1, 1, 2, 4]) == [1, 1, 2, 4], cfg
        assert cfg.get("contract_dilation", True) and cfg.get("style", "pytorch") == "pytorch", cfg
        return {"type": "resnet", "depth": cfg["depth"], "stem_channels": cfg["stem_channels"], "base_channels": cfg["base_channels"]}
    if t == "HRNet":
        extra = cfg["extra"]
        blocks = {"stage1": "BOTTLENECK", "stage2": "BASIC", "stage3": "BASIC", "stage4": "BASIC"}
        assert all(extra[s]["block"] == b for s, b in blocks.items()), extra
        stages = [{k: extra[s][k] for k in ("num_modules", "num_blocks", "num_channels")} for s in blocks]
        return {"type": "hrnet", "stages": stages}
    if t == "SwinTransformer":
        assert cfg.get("strides", [4, 2, 2, 2]) == [4, 2, 2, 2] and cfg.get("qk_scale") is None, cfg
        keys = ("embed_dims", "depths", "num_heads", "window_size", "pretrain_img_size", "patch_size", "mlp_ratio", "qkv_bias",
                "drop_rate", "attn_drop_rate", "drop_path_rate", "use_abs_pos_embed", "patch_norm", "out_indices")
        return {"type": "swin", **{k: cfg[k] for k in keys if k in cfg}}
    raise AssertionError(f"no ctxseg backbone for mmseg {t}: extend tests/golden_cases.py")


_HEAD_KEYS = {
    "FCNHead": ("fcn", ("in_index", "channels", "num_convs", "concat_input", "kernel_size", "dilation", "dropout_ratio",
                        "input_transform")),
    "PSPHead": ("psp", ("in_index", "channels", "pool_scales", "dropout_ratio")),
    "ASPPHead": ("aspp", ("in_index", "channels", "dilations", "dropout_ratio")),
    "UPerHead": ("uper", ("in_index", "channels", "pool_scales", "dropout_ratio")),
    "OCRHead": ("ocr", ("in_index", "channels", "ocr_channels", "dropout_ratio", "input_transform")),
}


def _mmseg_head(cfg: dict) -> dict:
    assert cfg["type"] in _HEAD_KEYS, f"no ctxseg head for mmseg {cfg['type']}: extend tests/golden_cases.py"
    name, keys = _HEAD_KEYS[cfg["type"]]
    return {"type": name, **{k: cfg[k] for k in keys if k in cfg}}


def mmseg_recipe(case: str) -> dict:
    """A ctxseg recipe dict describing the model of an mmseg golden case (from mmseg_model_cfg)."""
    c = config(case)
    m = c["mmseg_model_cfg"]
    pre = c["data_preprocessor"]
    model: dict[str, Any] = {"backbone": _mmseg_backbone(m["backbone"]), "align_corners": c["align_corners"]}
    decode = m["decode_head"]
    if m["type"] == "CascadeEncoderDecoder":  # mmseg's FCN -> OCR cascade is ctxseg's OCR head with a region head
        assert len(decode) == 2 and decode[1]["type"] == "OCRHead", decode
        model["head"] = {**_mmseg_head(decode[1]), "region_head": {k: v for k, v in _mmseg_head(decode[0]).items()}}
    else:
        model["head"] = _mmseg_head(decode)
    if m.get("auxiliary_head"):
        model["aux_head"] = _mmseg_head(m["auxiliary_head"])
    return {"name": f"golden-{case}", "description": f"built from {case}/config.json",
            "data": {"num_classes": c["num_classes"], "mean": pre["mean"], "std": pre["std"]}, "model": model}


# --------------------------------------------------------------------------------------------
# sssegmentation MCIBI config.json (segmentor_cfg) -> ctxseg recipe


def ssseg_mcibi_recipe(case: str) -> dict:
    """A ctxseg recipe dict for an ssseg MCIBI golden case (DeepLabV3 + MCIBI, ResNet-D8 v1c stem)."""
    c = config(case)
    seg = c["segmentor_cfg"]
    bb, head, aux = seg["backbone"], seg["head"], seg["auxiliary"]
    assert seg["type"] == "MCIBI" and bb["type"] == "ResNet" and bb["use_conv3x3_stem"] and bb["outstride"] == 8, seg
    ctx = head["context_within_image"]
    assert ctx["is_on"] and ctx["type"] == "aspp", f"no ctxseg head for ssseg context '{ctx}': extend tests/golden_cases.py"
    upd = head["update_cfg"]
    losses = seg["losses"]
    assert losses["loss_cls_stage2"]["scale_factor"] == 1.0, losses
    return {
        "name": f"golden-{case}",
        "data": {"num_classes": seg["num_classes"], "ignore_index": upd["ignore_index"]},
        "model": {
            "align_corners": seg["align_corners"],
            "backbone": {"type": "resnet", "depth": bb["depth"], "stem_channels": bb["stem_channels"],
                         "base_channels": bb["base_channels"]},
            "head": {"type": "aspp", "channels": head["feats_channels"], "dilations": ctx["cfg"]["dilations"],
                     "dropout_ratio": head["dropout"]},
            # ssseg's auxiliary decoder: 3x3 conv, BN, ReLU, dropout, 1x1 classifier on layer3
            "aux_head": {"type": "fcn", "in_index": 2, "channels": aux["out_channels"], "num_convs": 1, "concat_input": False,
                         "dropout_ratio": aux["dropout"]},
            "plugins": [{
                "type": "mcibi", "feats_channels": head["feats_channels"], "transform_channels": head["transform_channels"],
                "out_channels": head["out_channels"], "num_feats_per_cls": head["num_feats_per_cls"],
                "use_hard_aggregate": head["use_hard_aggregate"], "strategy": upd["strategy"],
                "base_momentum": upd["momentum_cfg"]["base_momentum"], "base_lr": upd["momentum_cfg"]["base_lr"],
                "adjust_by_learning_rate": upd["momentum_cfg"]["adjust_by_learning_rate"], "dropout": head["dropout"],
                "stage1_weight": losses["loss_cls_stage1"]["scale_factor"], "use_memory_loss": head["use_loss"],
                "memory_loss_weight": head["loss_cfg"]["scale_factor"],
            }],
        },
        # ssseg's CrossEntropyLoss(reduction="mean") averages over the non-ignored pixels
        "train": {"iters": 10, "loss": {"aux_weight": losses["loss_aux"]["scale_factor"], "avg_non_ignore": True}},
    }
