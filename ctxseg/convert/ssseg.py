"""`ctxseg convert ssseg`: sssegmentation (ssseg) MCIBI checkpoints -> ctxseg checkpoints.

ssseg saves `{"cur_epoch", "cur_iter", "model", "optimizer"}` (before July 2022: `{"epoch", "model",
"optimizer"}`); only `["model"]` is read (load_foreign, weights_only). ssseg builds conv-norm-act
blocks as plain Sequentials (`X.0` conv, `X.1` norm), ctxseg as ConvModules (`X.conv`, `X.bn`).

Key table (source -> ctxseg):

  backbone_net.stem.{0,1,3,4,6}.*                 -> backbone.net.conv1.{...}.*   ResNet deep stem (timm)
  backbone_net.stem.7.*                           -> backbone.net.bn1.*
  backbone_net.layerN.*                           -> backbone.net.layerN.*
  backbone_net.* (ResNeSt, ViT, HRNet)            -> ctxseg.convert.backbone_keys ssseg tables / same names (HRNet)
  context_within_image_module.parallel_branches.i -> decode_head.aspp_modules.i         (ASPP head)
  context_within_image_module.global_branch.{1,2} -> decode_head.image_pool.1.{conv,bn}
  context_within_image_module.bottleneck          -> decode_head.bottleneck  input channels permuted: ssseg
                                                     concatenates [branches..., pool], mmseg/ctxseg [pool, branches...]
  context_within_image_module.branches.i.{1,2}    -> decode_head.psp_modules.i.1.{conv,bn}  (PPM head)
  bottleneck                                      -> plugins.memory.bottleneck       (memory_input)
  memory_module.memory                            -> plugins.memory.memory
  memory_module.self_attention(s.i)               -> plugins.memory.self_attentions.(0|i)
  memory_module.fuse_memory_conv                  -> plugins.memory.fuse_memory_conv
  memory_module.bottleneck                        -> plugins.memory.memory_bottleneck
  memory_module.self_attention_ms / bottleneck_ms -> plugins.memory.self_attention_ms / bottleneck_ms
  decoder_stageN.{0,1,4}                          -> plugins.memory.decoder_stageN.{bottleneck.conv, bottleneck.bn,
                                                     conv_seg}
  auxiliary_decoder.{0,1,4}                       -> auxiliary_head.{convs.0.conv, convs.0.bn, conv_seg}
  auxiliary_decoder.i.{0,1,4,5,9}  (ViT: three)   -> auxiliary_head.decoders.i.{convs.0.conv, convs.0.bn, convs.1.conv,
                                                     convs.1.bn, conv_seg}   (aux_head type "ssseg_aux")
  downsample_backbone.{0,1}                       -> backbone.downsample.{0,1}   (HRNet concat_downsample > 1)

COCO-Stuff-10k: ssseg trains 182 classes (label = 1-based COCO-Stuff id - 1, 0 -> 255), ctxseg 171
(the 11 never-annotated thing ids dropped, ctxseg/data/prepare/cocostuff.py). A 182-class checkpoint
converted with a 171-class recipe keeps the class rows of the 171 used ids, in that order, in every
class-indexed tensor (memory bank, stage-1/2 classifiers, auxiliary classifiers); the 11 dropped
rows are printed as ignored. A recipe with num_classes = 182 converts without the selection.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from ctxseg.convert.base import KeyMap
from ctxseg.errors import UserError

if TYPE_CHECKING:  # tables never import the recipe layer
    from ctxseg.config import Recipe

_CTX = r"context_within_image_module"
_MEM = "plugins.memory"


def _conv_module(src: str, dst: str) -> list[tuple[str, str]]:
    """ssseg Sequential(conv, norm, act) at `src` -> ctxseg ConvModule at `dst`."""
    return [(rf"{src}\.0\.(.+)", rf"{dst}.conv.\1"), (rf"{src}\.1\.(.+)", rf"{dst}.bn.\1")]


def _attention(src: str, dst: str) -> list[tuple[str, str]]:
    rules = []
    for j in (0, 1):
        rules += _conv_module(rf"{src}\.key_project\.{j}", f"{dst}.key_project.{j}")
        rules += _conv_module(rf"{src}\.query_project\.{j}", f"{dst}.query_project.{j}")
    rules += _conv_module(rf"{src}\.value_project", f"{dst}.value_project")
    rules += _conv_module(rf"{src}\.out_project", f"{dst}.out_project")
    return rules


def _stage_decoder(src: str, dst: str) -> list[tuple[str, str]]:
    return _conv_module(rf"{src}", f"{dst}.bottleneck") + [(rf"{src}\.4\.(.+)", rf"{dst}.conv_seg.\1")]


_RESNET = [
    (r"backbone_net\.stem\.([0-6])\.(.+)", r"backbone.net.conv1.\1.\2"),
    (r"backbone_net\.stem\.7\.(.+)", r"backbone.net.bn1.\1"),
    (r"backbone_net\.(conv1|bn1)\.(.+)", r"backbone.net.\1.\2"),
    (r"backbone_net\.(layer[1-4]\..+)", r"backbone.net.\1"),
]


def _aspp_bottleneck_fixup(src: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> set[str]:
    """ssseg ASPP concatenates [branch_0..branch_n-1, image pool]; ctxseg (mmseg) puts the pool first."""
    key = f"{_CTX}.bottleneck.0.weight"
    if key not in src:
        return set()
    n = len([k for k in src if re.fullmatch(rf"{_CTX}\.parallel_branches\.\d+\.0\.weight", k)])
    w = src[key]
    per = w.shape[1] // (n + 1)
    out["decode_head.bottleneck.conv.weight"] = torch.cat([w[:, n * per :], w[:, : n * per]], dim=1)
    return {key}


# ssseg class-indexed tensors (class = dim 0): the memory bank, the stage decoders' and the auxiliary
# decoders' final 1x1 convs (ViT: auxiliary_decoder.i.9, training-only and ignored)
_CLASS_INDEXED = [
    r"memory_module\.memory",
    r"decoder_stage[12]\.4\.(weight|bias)",
    r"auxiliary_decoder\.4\.(weight|bias)",
    r"auxiliary_decoder\.\d+\.9\.(weight|bias)",
]
# names of the 11 COCO-Stuff ids that ctxseg's 171-class set drops (ssseg's 182-class names), in id order
_DROPPED_NAMES = (
    "street sign",
    "hat",
    "shoe",
    "eye glasses",
    "plate",
    "mirror",
    "window",
    "desk",
    "door",
    "blender",
    "hair brush",
)


def _coco_rows() -> tuple[list[int], list[str]]:
    """Rows of ssseg's 182-class tensors kept for ctxseg's 171 classes (in ctxseg's class order), and
    the dropped ids. ssseg's COCOStuff10kDataset maps the .mat id i (1..182) to label i - 1."""
    from ctxseg.data.prepare.cocostuff import UNUSED_1BASED, USED_1BASED

    assert len(UNUSED_1BASED) == len(_DROPPED_NAMES)
    dropped = [f"{cid} {name} (row {cid - 1})" for cid, name in zip(UNUSED_1BASED, _DROPPED_NAMES)]
    return [cid - 1 for cid in USED_1BASED], dropped


def _source_classes(src: dict) -> int | None:
    w = src.get("decoder_stage2.4.bias")
    return None if w is None else int(w.shape[0])


def class_rows(recipe: Recipe, src: dict) -> tuple[list[int], list[str]] | None:
    """(kept source rows, dropped class descriptions) when a 182-class ssseg COCO-Stuff checkpoint is
    converted onto a 171-class recipe; None when the class counts need no selection."""
    if _source_classes(src) == 182 and recipe.data.num_classes == 171:
        return _coco_rows()
    return None


def _class_rows_fixup(rules: list[tuple[str, str]], ignore: list[str], rows: list[int]):
    """Fix-up: class-indexed source tensors -> their renamed target with only `rows` (in that order)."""
    compiled = [(re.compile(p), r) for p, r in rules]
    index = torch.tensor(rows)

    def fixup(src: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> set[str]:
        used = set()
        for k, v in src.items():
            if not any(re.fullmatch(p, k) for p in _CLASS_INDEXED) or any(re.fullmatch(p, k) for p in ignore):
                continue
            for pat, rep in compiled:
                if pat.fullmatch(k):
                    out[pat.sub(rep, k)] = v.index_select(0, index.to(v.device))
                    used.add(k)
                    break
        return used

    return fixup


def _backbone_keymap(recipe: Recipe) -> KeyMap:
    from ctxseg.convert.backbone_keys import ssseg_resnest_rules, ssseg_vit_rules

    kind = recipe.model.backbone["type"]
    if kind == "resnet":
        return KeyMap(rules=list(_RESNET))
    if kind == "resnest":
        return KeyMap(rules=ssseg_resnest_rules())
    if kind == "hrnet":  # ctxseg's HRNet keeps the mmseg/ssseg module names
        # MCIBI's downsample_backbone (conv, BN; on the concatenated branches) is the backbone's
        # `downsample` when the recipe sets concat_downsample
        return KeyMap(
            rules=[
                (r"backbone_net\.(.+)", r"backbone.\1"),
                (r"downsample_backbone\.([01])\.(.+)", r"backbone.downsample.\1.\2"),
            ]
        )
    if kind == "vit":  # includes MCIBI's norm_layers.i (outside the backbone in ssseg)
        return KeyMap(rules=ssseg_vit_rules())
    raise UserError(f"convert ssseg: no key table for backbone type '{kind}' (resnet, resnest, hrnet, vit)")


def _aux_decoders_rules(cfg: dict) -> list[tuple[str, str]]:
    """ssseg's list of DefaultAuxiliaryDecoders (Sequentials: per conv [conv, norm, act, (upsample)],
    then dropout, classifier) -> ctxseg's ssseg_aux head."""
    n = cfg.get("num_convs", 2)
    step = 4 if cfg.get("upsample", 4) > 1 else 3
    rules = [
        (rf"auxiliary_decoder\.(\d+)\.{step * j + o}\.(.+)", rf"auxiliary_head.decoders.\1.convs.{j}.{name}.\2")
        for j in range(n)
        for o, name in ((0, "conv"), (1, "bn"))
    ]
    rules.append((rf"auxiliary_decoder\.(\d+)\.{step * n + 1}\.(.+)", r"auxiliary_head.decoders.\1.conv_seg.\2"))
    return rules


def keymap_for(recipe: Recipe, src: dict) -> KeyMap:
    m = recipe.model
    memory = m.plugin("mcibi")
    if memory is None:
        raise UserError('convert ssseg: the recipe must describe an MCIBI model ([[model.plugins]] type = "mcibi")')
    bb = _backbone_keymap(recipe)
    rules, ignore, fixups = list(bb.rules), list(bb.ignore), list(bb.fixups)
    head = m.head["type"]
    if head == "aspp":
        for i in range(16):
            rules += _conv_module(rf"{_CTX}\.parallel_branches\.{i}", f"decode_head.aspp_modules.{i}")
        rules += [
            (rf"{_CTX}\.global_branch\.1\.(.+)", r"decode_head.image_pool.1.conv.\1"),
            (rf"{_CTX}\.global_branch\.2\.(.+)", r"decode_head.image_pool.1.bn.\1"),
            (rf"{_CTX}\.bottleneck\.1\.(.+)", r"decode_head.bottleneck.bn.\1"),
        ]
        fixups.append(_aspp_bottleneck_fixup)
    elif head == "psp":  # ssseg PPM: branches.i = (pool, conv, norm, act); concat [x, pools...] as mmseg
        rules += [
            (rf"{_CTX}\.branches\.(\d+)\.1\.(.+)", r"decode_head.psp_modules.\1.1.conv.\2"),
            (rf"{_CTX}\.branches\.(\d+)\.2\.(.+)", r"decode_head.psp_modules.\1.1.bn.\2"),
        ]
        rules += _conv_module(rf"{_CTX}\.bottleneck", "decode_head.bottleneck")
    elif head == "fcn" and not memory.get("use_context_within_image", True):
        # no within-image context: ssseg's memory-input bottleneck is the FCN head's single conv
        rules += _conv_module(r"bottleneck", "decode_head.convs.0")
    else:
        raise UserError(
            f"convert ssseg: head type '{head}' has no ssseg counterpart (aspp, psp, or fcn without context)"
        )
    if memory.get("use_context_within_image", True):
        rules += _conv_module(r"bottleneck", f"{_MEM}.bottleneck")
    rules.append((r"memory_module\.memory", f"{_MEM}.memory"))
    rules += _attention(r"memory_module\.self_attention", f"{_MEM}.self_attentions.0")
    for i in range(64):
        rules += _attention(rf"memory_module\.self_attentions\.{i}", f"{_MEM}.self_attentions.{i}")
    rules += _conv_module(r"memory_module\.fuse_memory_conv", f"{_MEM}.fuse_memory_conv")
    rules += _conv_module(r"memory_module\.bottleneck", f"{_MEM}.memory_bottleneck")
    rules += _attention(r"memory_module\.self_attention_ms", f"{_MEM}.self_attention_ms")
    rules += _conv_module(r"memory_module\.bottleneck_ms", f"{_MEM}.bottleneck_ms")
    rules += _stage_decoder(r"decoder_stage1", f"{_MEM}.decoder_stage1")
    rules += _stage_decoder(r"decoder_stage2", f"{_MEM}.decoder_stage2")
    if m.aux_head is not None and m.aux_head["type"] == "ssseg_aux":
        rules += _aux_decoders_rules(m.aux_head)
    elif m.aux_head is not None:
        rules += _conv_module(r"auxiliary_decoder", "auxiliary_head.convs.0")
        rules.append((r"auxiliary_decoder\.4\.(.+)", r"auxiliary_head.conv_seg.\1"))
    else:  # training-only head; reported as ignored
        ignore.append(r"auxiliary_decoder\..+")
    selection = class_rows(recipe, src)
    if selection is not None:
        fixups.append(_class_rows_fixup(rules, ignore, selection[0]))
    return KeyMap(rules=rules, ignore=ignore, fixups=fixups, target_defaults=list(bb.target_defaults))
