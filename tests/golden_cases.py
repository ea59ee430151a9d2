"""Golden cases read from the data: discover case folders, build each case's recipe from its own
config.json, read its tolerance from its README. A new case folder is tested without new code
(tests fail loudly on a model type or stored tensor they cannot map, rather than skip it)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
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
        assert cfg.get("strides", [1, 2, 1, 1]) == [1, 2, 1, 1] and cfg.get("dilations", [1, 1, 2, 4]) == [
            1,
            1,
            2,
            4,
        ], cfg
        assert cfg.get("contract_dilation", True) and cfg.get("style", "pytorch") == "pytorch", cfg
        return {
            "type": "resnet",
            "depth": cfg["depth"],
            "stem_channels": cfg["stem_channels"],
            "base_channels": cfg["base_channels"],
        }
    if t == "HRNet":
        extra = cfg["extra"]
        blocks = {"stage1": "BOTTLENECK", "stage2": "BASIC", "stage3": "BASIC", "stage4": "BASIC"}
        assert all(extra[s]["block"] == b for s, b in blocks.items()), extra
        stages = [{k: extra[s][k] for k in ("num_modules", "num_blocks", "num_channels")} for s in blocks]
        return {"type": "hrnet", "stages": stages}
    if t == "SwinTransformer":
        assert cfg.get("strides", [4, 2, 2, 2]) == [4, 2, 2, 2] and cfg.get("qk_scale") is None, cfg
        # ctxseg's Swin: GELU MLPs, LayerNorms, nothing frozen, no checkpointing (mmseg's defaults)
        assert cfg.get("act_cfg", {"type": "GELU"})["type"] == "GELU", cfg
        assert cfg.get("norm_cfg", {"type": "LN"})["type"] == "LN" and cfg.get("frozen_stages", -1) == -1, cfg
        keys = (
            "embed_dims",
            "depths",
            "num_heads",
            "window_size",
            "pretrain_img_size",
            "patch_size",
            "mlp_ratio",
            "qkv_bias",
            "drop_rate",
            "attn_drop_rate",
            "drop_path_rate",
            "use_abs_pos_embed",
            "patch_norm",
            "out_indices",
        )
        return {"type": "swin", **{k: cfg[k] for k in keys if k in cfg}}
    raise AssertionError(f"no ctxseg backbone for mmseg {t}: extend tests/golden_cases.py")


_HEAD_KEYS = {
    "FCNHead": (
        "fcn",
        (
            "in_index",
            "channels",
            "num_convs",
            "concat_input",
            "kernel_size",
            "dilation",
            "dropout_ratio",
            "input_transform",
        ),
    ),
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
    return mmseg_recipe_from(config(case), case)


def mmseg_recipe_from(c: dict, case: str) -> dict:
    """mmseg_recipe for a config.json already read (`c`: its mmseg_model_cfg, data_preprocessor,
    align_corners and num_classes); `case` names the recipe."""
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
    return {
        "name": f"golden-{case}",
        "description": f"built from {case}/config.json",
        "data": {"num_classes": c["num_classes"], "mean": pre["mean"], "std": pre["std"]},
        "model": model,
    }


def cac_model_recipe_from(c: dict, case: str) -> dict:
    """The tiny ctxseg recipe dict of a CAC-fork training case (config.json of
    tests/golden_train/cases/cac-*: `cac_model_cfg` = the fork's mmseg 0.x model config, `img_norm_cfg`,
    align_corners, num_classes). The fork's *CAC heads are the plain mmseg heads plus the CAC
    classifier, which the case's recipe adds as [[model.plugins]] type = "cac"."""
    m = json.loads(json.dumps(c["cac_model_cfg"]))
    norm = c["img_norm_cfg"]
    assert norm["to_rgb"], norm  # ctxseg normalises BGR images into RGB order
    heads = m["decode_head"] if isinstance(m["decode_head"], list) else [m["decode_head"]]
    cac = [h for h in heads if h["type"] in CAC_HEADS]
    assert len(cac) == 1 and cac[0] is heads[-1], f"one CAC head, the last decode head: {heads}"
    cac[0]["type"] = cac[0]["type"].removesuffix("CAC")  # OCRHeadCAC -> OCRHead, ...
    assert cac[0]["type"] in _HEAD_KEYS, f"no ctxseg head for mmseg {cac[0]['type']}: extend tests/golden_cases.py"
    pre = {"mean": norm["mean"], "std": norm["std"]}
    return mmseg_recipe_from({**c, "mmseg_model_cfg": m, "data_preprocessor": pre}, case)


# --------------------------------------------------------------------------------------------
# sssegmentation MCIBI config.json (segmentor_cfg) -> ctxseg recipe


def ssseg_mcibi_recipe(case: str) -> dict:
    """A ctxseg recipe dict for an ssseg MCIBI golden case (DeepLabV3 + MCIBI, ResNet-D8 v1c stem)."""
    return ssseg_mcibi_recipe_from(config(case)["segmentor_cfg"], case)


def ssseg_mcibi_recipe_from(seg: dict, case: str) -> dict:
    """The ctxseg recipe dict of an ssseg MCIBI SEGMENTOR_CFG (model part): DeepLabV3 + MCIBI on ResNet-D8."""
    bb, head, aux = seg["backbone"], seg["head"], seg["auxiliary"]
    assert seg["type"] == "MCIBI" and bb["type"] == "ResNet" and bb["use_conv3x3_stem"] and bb["outstride"] == 8, seg
    ctx = head["context_within_image"]
    assert ctx["is_on"] and ctx["type"] == "aspp", (
        f"no ctxseg head for ssseg context '{ctx}': extend tests/golden_cases.py"
    )
    upd = head["update_cfg"]
    losses = seg["losses"]
    assert losses["loss_cls_stage2"]["scale_factor"] == 1.0, losses
    return {
        "name": f"golden-{case}",
        "data": {"num_classes": seg["num_classes"], "ignore_index": upd["ignore_index"]},
        "model": {
            "align_corners": seg["align_corners"],
            "backbone": {
                "type": "resnet",
                "depth": bb["depth"],
                "stem_channels": bb["stem_channels"],
                "base_channels": bb["base_channels"],
            },
            "head": {
                "type": "aspp",
                "channels": head["feats_channels"],
                "dilations": ctx["cfg"]["dilations"],
                "dropout_ratio": head["dropout"],
            },
            # ssseg's auxiliary decoder: 3x3 conv, BN, ReLU, dropout, 1x1 classifier on layer3
            "aux_head": {
                "type": "fcn",
                "in_index": 2,
                "channels": aux["out_channels"],
                "num_convs": 1,
                "concat_input": False,
                "dropout_ratio": aux["dropout"],
            },
            "plugins": [
                {
                    "type": "mcibi",
                    "feats_channels": head["feats_channels"],
                    "transform_channels": head["transform_channels"],
                    "out_channels": head["out_channels"],
                    "num_feats_per_cls": head["num_feats_per_cls"],
                    "use_hard_aggregate": head["use_hard_aggregate"],
                    "strategy": upd["strategy"],
                    "base_momentum": upd["momentum_cfg"]["base_momentum"],
                    "base_lr": upd["momentum_cfg"]["base_lr"],
                    "adjust_by_learning_rate": upd["momentum_cfg"]["adjust_by_learning_rate"],
                    "dropout": head["dropout"],
                    "stage1_weight": losses["loss_cls_stage1"]["scale_factor"],
                    "use_memory_loss": head["use_loss"],
                    "memory_loss_weight": head["loss_cfg"]["scale_factor"],
                }
            ],
        },
        # ssseg's CrossEntropyLoss(reduction="mean") averages over the non-ignored pixels
        "train": {"iters": 10, "loss": {"aux_weight": losses["loss_aux"]["scale_factor"], "avg_non_ignore": True}},
    }


# --------------------------------------------------------------------------------------------
# Every stored tensor is compared: the one place that says which stored tensors are inputs


# Stored tensors a test FEEDS to the computation (inputs, labels, start states) rather than
# compares, per reference, as regular expressions over the key -> why. A stored key that a test
# neither compares (through Stored.ref) nor finds here fails that test, with the key's name.
GOLDEN_INPUTS: dict[str, dict[str, str]] = {
    "mmseg": {
        r"input": "the network input; `image_bgr_uint8` is compared against it through ctxseg's preprocessing",
    },
    "ssseg-mcibi": {
        r"input": "the network input",
        r"labels": "segmentation labels fed to the update / training step",
        r"features": "the features passed to update() (image resolution, as the segmentor passes them)",
        r"memory_before": "the memory state the update starts from",
        r"memory_loss\.memory": "the memory the memory loss is computed on",
        r"learning_rate|base_lr|base_momentum|epoch": "schedule values the update / step is run with "
        "(the derived `momentum` is compared)",
    },
    "contrastiveseg": {
        r"(contrast_nomem|contrast_mem)/[^/]+/(X_f32|X_f64|y|queue_f32)": (
            "anchors, their labels and the queue fed to _contrastive"
        ),
        r"sampling/[^/]+/(labels|predict)": "ground truth and prediction fed to the anchor sampler",
        r"forward/[^/]+/(embed|labels|predict|segment_queue|pixel_queue)": "inputs of PixelContrastLoss.forward",
        r"contrast_ce/[^/]+/(seg|embed|target|segment_queue|pixel_queue)": "outputs / labels / queues fed to the loss",
        r"queue/[^/]+/init/.*": "the queue state the first step starts from",
        r"queue/[^/]+/step\d+/(keys|labels)": "the keys and labels enqueued at a step",
        r"input_f(32|64)": "the network input",
    },
    "cac": {
        r"input\..*": "head inputs and labels (input.gt_semantic_seg)",
        r"train_dropout\.mask": "the fixed Dropout2d mask the train_dropout run applies",
    },
}

# Stored tensors no test can compare, with the reason. Empty: everything stored is compared.
NOT_COMPARABLE: dict[str, dict[str, str]] = {}


class Stored:
    """The tensors of one golden .safetensors file. `stored[key]` reads an input (it must be
    listed in GOLDEN_INPUTS); `stored.ref(key)` reads a reference value and records it as compared;
    `assert_all_compared()` fails naming every stored key that was neither."""

    def __init__(self, reference: str, *parts: str):
        from safetensors.torch import load_file

        from tests.conftest import golden

        self.reference, self.name = reference, "/".join(parts)
        self.tensors = load_file(str(golden(*parts)))
        self.compared: set[str] = set()
        self.exempt = {**GOLDEN_INPUTS.get(reference, {}), **NOT_COMPARABLE.get(reference, {})}

    def keys(self):
        return self.tensors.keys()

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def is_input(self, key: str) -> bool:
        return any(re.fullmatch(p, key) for p in self.exempt)

    def __getitem__(self, key: str):
        assert self.is_input(key), (
            f"{self.name}: {key} is read as an input but GOLDEN_INPUTS['{self.reference}'] does not list it"
        )
        return self.tensors[key]

    def ref(self, key: str):
        self.compared.add(key)
        return self.tensors[key]

    def uncompared(self, where: Callable[[str], bool] = lambda key: True) -> list[str]:
        """Stored keys (those `where` selects) neither compared nor listed as inputs."""
        return sorted(k for k in self.tensors if where(k) and k not in self.compared and not self.is_input(k))

    def assert_all_compared(self, where: Callable[[str], bool] = lambda key: True) -> None:
        missing = self.uncompared(where)
        assert not missing, (
            f"{self.name}: stored tensors no test compares: {missing} (compare them, or list them with "
            f"the reason in tests/golden_cases.py GOLDEN_INPUTS / NOT_COMPARABLE)"
        )


# --------------------------------------------------------------------------------------------
# README "Suggested tolerances" of the cac and contrastiveseg folders

_NUM = r"([0-9.]+e-?[0-9]+|[0-9.]+)"


def _find(text: str, pattern: str, where: str) -> tuple[float, ...]:
    m = re.search(pattern, text)
    assert m, f"{where}: no tolerance line matching {pattern!r}"
    return tuple(float(g) for g in m.groups())


def cac_tolerances() -> dict[str, tuple[float, float]]:
    """kind -> (atol, rtol) from cac/README.md; for "grad" and "grad_ocr_context" atol is a
    fraction of max|ref| of each tensor."""
    text = (GOLDEN / "cac" / "README.md").read_text()
    where = "cac/README.md"
    logits = _find(text, rf"- logits[^:\n]*: atol {_NUM}, rtol {_NUM}", where)
    feats = _find(text, rf"prototypes/centres/features: atol {_NUM}, rtol {_NUM}", where)
    rtol, atol = _find(text, rf"- loss scalars: rtol {_NUM}, atol {_NUM}", where)
    g_rtol, g_frac, g_frac_ocr = _find(
        text,
        rf"- gradients: rtol {_NUM} with atol = {_NUM} \* max\|ref\| per tensor "
        rf"\({_NUM} \* max\|ref\| for the OCR object_context_block",
        where,
    )
    assert re.search(r"- label-derived tensors \([^)]*\): exact", text), (
        f"{where}: label-derived tensors are no longer 'exact'"
    )
    return {
        "logits": logits,
        "features": feats,
        "scalar": (atol, rtol),
        "grad": (g_frac, g_rtol),
        "grad_ocr_context": (g_frac_ocr, g_rtol),
        "exact": (0.0, 0.0),
    }


def contrast_tolerances() -> dict[str, tuple[float, float]]:
    """kind -> (atol, rtol) from contrastiveseg/README.md "Suggested tolerances"."""
    text = (GOLDEN / "contrastiveseg" / "README.md").read_text()
    where = "contrastiveseg/README.md"
    (f64_rtol,) = _find(text, rf"`_contrastive` float64: rtol {_NUM}", where)
    loss_rtol, loss_atol = _find(text, rf"float32 losses \(all groups\): rtol {_NUM}, atol {_NUM}", where)
    (queue_atol,) = _find(text, rf"\* queues: atol {_NUM}", where)
    m32_atol, m32_rtol = _find(text, rf"tiny model: float32 atol {_NUM}, rtol {_NUM}", where)
    (m64_atol,) = _find(text, rf"float64 atol {_NUM}", where)
    assert re.search(r"integer outputs \([^)]*\): exact\. anchors: exact", text), (
        f"{where}: integer outputs / anchors no longer exact"
    )
    return {
        "loss_f64": (0.0, f64_rtol),
        "loss_f32": (loss_atol, loss_rtol),
        "queue": (queue_atol, 0.0),
        "model_f32": (m32_atol, m32_rtol),
        "model_f64": (m64_atol, m64_atol),
        "exact": (0.0, 0.0),
    }


# --------------------------------------------------------------------------------------------
# CAC config.json (official mmseg 0.x head arguments) -> ctxseg recipe

CAC_HEADS = {
    "FCNHeadCAC": "fcn",
    "DepthwiseSeparableASPPHeadCAC": "sep_aspp",
    "UPerHeadCAC": "uper",
    "OCRHeadCAC": "ocr",
}


def cac_case_folders() -> list[str]:
    return sorted(p.parent.name for p in (GOLDEN / "cac").glob("*-cac/config.json"))


def cac_config(case: str) -> dict[str, Any]:
    return json.loads((GOLDEN / "cac" / case / "config.json").read_text())


def _cac_head(hc: dict) -> dict:
    assert hc["type"] in CAC_HEADS, f"no ctxseg head for {hc['type']}: extend tests/golden_cases.py CAC_HEADS"
    kind = CAC_HEADS[hc["type"]]
    keys = {
        "fcn": ("in_index", "channels", "num_convs", "concat_input", "kernel_size", "dropout_ratio", "input_transform"),
        "sep_aspp": ("in_index", "channels", "dilations", "c1_in_channels", "c1_channels", "dropout_ratio"),
        "uper": ("in_index", "channels", "pool_scales", "dropout_ratio"),
        "ocr": ("in_index", "channels", "ocr_channels", "dropout_ratio", "input_transform"),
    }[kind]
    return {"type": kind, **{k: hc[k] for k in keys if k in hc}}


def cac_recipe(case: str) -> dict:
    """A ctxseg recipe dict for a CAC golden head. The golden inputs are the head inputs, so the
    backbone is a stand-in (tests put an identity in its place); losses and weights from config.json."""
    c = cac_config(case)
    hc = c["head_cfg"]
    head = _cac_head(hc)
    if "prev_head_cfg" in c:  # OCR cascade: decode_head.0 (plain FCN) is ctxseg's region head
        pc = c["prev_head_cfg"]
        assert pc["type"] == "FCNHead", pc
        head["region_head"] = {k: v for k, v in _mmseg_head(pc).items() if k != "type"}
    main = hc["loss_decode"]
    assert (
        main["type"] == "CrossEntropyLoss" and not main.get("use_sigmoid") and not main.get("avg_non_ignore", False)
    ), main
    loss = {"decode_weight": main.get("loss_weight", 1.0), "avg_non_ignore": False}  # mmseg 0.19: sum / ALL pixels
    if "prev_head_cfg" in c:
        loss["aux_weight"] = c["prev_head_cfg"]["loss_decode"]["loss_weight"]
    return {
        "name": f"golden-cac-{case}",
        "description": f"built from cac/{case}/config.json",
        "data": {"num_classes": hc["num_classes"], "ignore_index": c["ignore_index"]},
        "model": {
            "align_corners": hc.get("align_corners", False),
            "backbone": {"type": "resnet"},
            "head": head,
            "plugins": [{"type": "cac"}],
        },
        "train": {"loss": loss},
    }


# --------------------------------------------------------------------------------------------
# ContrastiveSeg hrnet-contrast/config.json (openseg HRNet_W48_CONTRAST) -> ctxseg recipe


def contrast_model_folders() -> list[str]:
    return sorted(p.parent.name for p in (GOLDEN / "contrastiveseg").glob("*/config.json"))


def contrast_model_recipe(case: str) -> dict:
    c = json.loads((GOLDEN / "contrastiveseg" / case / "config.json").read_text())
    assert c["reference"]["class"].endswith("HRNet_W48_CONTRAST"), f"no ctxseg model for {c['reference']['class']}"
    hr = c["backbone"]["hrnet_config"]
    # stem and layer1 (4 Bottlenecks of 64) are fixed in openseg's code, not part of the config
    stages = [{"num_modules": 1, "num_blocks": [4], "num_channels": [64]}]
    for s in ("STAGE2", "STAGE3", "STAGE4"):
        assert hr[s]["BLOCK"] == "BASIC" and hr[s]["FUSE_METHOD"] == "SUM", hr[s]
        stages.append(
            {
                "num_modules": hr[s]["NUM_MODULES"],
                "num_blocks": hr[s]["NUM_BLOCKS"],
                "num_channels": hr[s]["NUM_CHANNELS"],
            }
        )
    assert c["concat"]["upsample_mode"] == "bilinear", c["concat"]
    return {
        "name": f"golden-contrast-{case}",
        "description": f"built from contrastiveseg/{case}/config.json",
        "data": {"num_classes": c["num_classes"], "ignore_index": -1},  # openseg: dataset 255 -> -1
        "model": {
            "align_corners": c["concat"]["align_corners"],
            "backbone": {"type": "hrnet", "fuse_upsample": "openseg", "stages": stages},
            "head": {"type": "openseg_hrnet"},
            "plugins": [{"type": "pixel_contrast", "proj": c["proj"], "proj_dim": c["proj_dim"]}],
        },
    }


def openseg_contrast_recipe_from(c: dict) -> dict:
    """The tiny ctxseg model of a ContrastiveSeg training golden (tests/golden_train/ref_openseg.py's
    config.json: hrnet_config, layer1, model_num_classes, openseg_config's contrast block)."""
    hr = c["hrnet_config"]
    stages = [{"num_modules": 1, "num_blocks": [c["layer1"]["blocks"]], "num_channels": [c["layer1"]["planes"]]}]
    for s in ("STAGE2", "STAGE3", "STAGE4"):
        assert hr[s]["BLOCK"] == "BASIC" and hr[s]["FUSE_METHOD"] == "SUM", hr[s]
        spec = hr[s]
        stages.append(
            {"num_modules": spec["NUM_MODULES"], "num_blocks": spec["NUM_BLOCKS"], "num_channels": spec["NUM_CHANNELS"]}
        )
    return {
        "name": f"golden-{c['case']}",
        "description": f"built from {c['case']}/config.json",
        "data": {"num_classes": c["model_num_classes"]},
        "model": {"backbone": {"type": "hrnet", "fuse_upsample": "openseg", "stages": stages}},
    }
