"""Swin backbone keys: mmseg (0.x and 1.x), the original Swin segmentation repo, timm -> ctxseg.

The Swin backbone's pretrained-key filter (timm's `checkpoint_filter_fn` idea): it lives beside
the backbone, which loads `pretrained=` files with it, and `ctxseg convert mmseg` reuses the
same table (ctxseg.convert.mmseg_swin.swin_rules) for whole mmseg checkpoints.

  mmseg 0.x / 1.x (same names; CAC's released Swin models are 0.19):
    backbone.stages.i.blocks.j.ffn.layers.0.0.*  -> backbone.stages.i.blocks.j.mlp.fc1.*
    backbone.stages.i.blocks.j.ffn.layers.1.*    -> backbone.stages.i.blocks.j.mlp.fc2.*
    backbone.(patch_embed|stages|norm{i}|absolute_pos_embed).*  -> same name
  original Swin-Transformer-Semantic-Segmentation / microsoft Swin (downsample at the END of layer i):
    layers.i.blocks.j.attn.{qkv,proj,relative_position_bias_table} -> stages.i.blocks.j.attn.w_msa.*
    layers.i.blocks.j.{norm1,norm2,mlp.fc1,mlp.fc2}  -> stages.i.blocks.j.*
    patch_embed.proj -> patch_embed.projection; layers.i.downsample.* -> stages.i.downsample.* (fix-up)
  timm (downsample at the START of layer i): layers.i.downsample.* -> stages.(i-1).downsample.*

Fix-ups: the patch-merging `norm`/`reduction` weights are permuted between the original
[x(0,0), x(1,0), x(0,1), x(1,1)] order and mmseg's nn.Unfold order (c*4 + 2*dh + dw) whenever
source and the recipe's `merge_order` differ (what mmseg's swin2mmseg.py does); the
`relative_position_index` buffers of the source are checked against the derived index (ctxseg
recomputes them; a mismatch means another window size) and so count as used.
"""

from __future__ import annotations

import re

import torch

from ctxseg.errors import UserError
from ctxseg.keymap import KeyMap, apply_keymap

# position k of (dh, dw) in the original order is [(0,0), (1,0), (0,1), (1,1)];
# the unfold order is j = 2*dh + dw, so j -> k is [0, 2, 1, 3] (its own inverse)
_PERM = [0, 2, 1, 3]


def orig_to_unfold(w: torch.Tensor) -> torch.Tensor:
    """Patch-merging weight (out, 4C) or norm (4C,) from original/timm order to nn.Unfold order."""
    lead = w.shape[:-1]
    c = w.shape[-1] // 4
    return w.reshape(*lead, 4, c)[..., _PERM, :].transpose(-1, -2).reshape(*lead, 4 * c)


def unfold_to_orig(w: torch.Tensor) -> torch.Tensor:
    lead = w.shape[:-1]
    c = w.shape[-1] // 4
    return w.reshape(*lead, c, 4).transpose(-1, -2)[..., _PERM, :].reshape(*lead, 4 * c)


def relative_position_index(ws: int) -> torch.Tensor:
    from timm.models.swin_transformer import get_relative_position_index

    return get_relative_position_index(ws, ws)


def source_layout(keys) -> str:
    """'mmseg' (stages.*), 'orig' (layers.*, downsample at the end of a layer) or 'timm'."""
    keys = list(keys)
    if any(re.search(r"(^|\.)stages\.\d+\.blocks\.", k) for k in keys):
        return "mmseg"
    if any(re.search(r"(^|\.)layers\.0\.downsample\.", k) for k in keys):
        return "orig"
    return "timm"


def swin_keymap(
    src: dict, merge_order: str = "unfold", src_prefix: str = "backbone.", dst_prefix: str = "backbone."
) -> KeyMap:
    s, d = re.escape(src_prefix), dst_prefix
    layout = source_layout(src)
    blk = r"(?:stages|layers)\.(\d+)\.blocks\.(\d+)"
    rules: list[tuple[str, str]] = []
    ignore = [s + r".*\.attn_mask"]  # original checkpoints store the shift masks; derived here
    if layout == "mmseg":
        rules += [
            (s + blk + r"\.ffn\.layers\.0\.0\.(weight|bias)", d + r"stages.\1.blocks.\2.mlp.fc1.\3"),
            (s + blk + r"\.ffn\.layers\.1\.(weight|bias)", d + r"stages.\1.blocks.\2.mlp.fc2.\3"),
            (s + r"(patch_embed\..+|stages\.\d+\.blocks\..+|norm\d\..+|absolute_pos_embed)", d + r"\1"),
        ]
    else:
        rules += [
            (
                s + blk + r"\.attn\.(qkv|proj|relative_position_bias_table)(.*)",
                d + r"stages.\1.blocks.\2.attn.w_msa.\3\4",
            ),
            (s + blk + r"\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)", d + r"stages.\1.blocks.\2.\3.\4"),
            (s + r"patch_embed\.proj\.(weight|bias)", d + r"patch_embed.projection.\1"),
            (s + r"(patch_embed\.norm\..+|norm\d\..+|absolute_pos_embed)", d + r"\1"),
        ]
    down = re.compile(s + r"(?:stages|layers)\.(\d+)\.downsample\.(norm|reduction)\.(weight|bias)")
    src_order = "unfold" if layout == "mmseg" else "timm"

    def merging(src_sd: dict, out: dict) -> set[str]:
        used = set()
        for k, v in src_sd.items():
            m = down.fullmatch(k)
            if not m:
                continue
            stage = int(m.group(1)) - (1 if layout == "timm" else 0)
            if src_order != merge_order:
                v = orig_to_unfold(v) if merge_order == "unfold" else unfold_to_orig(v)
            out[f"{d}stages.{stage}.downsample.{m.group(2)}.{m.group(3)}"] = v
            used.add(k)
        return used

    rpi = re.compile(s + r".*\.relative_position_index")

    def check_index(src_sd: dict, out: dict) -> set[str]:
        used = set()
        for k, v in src_sd.items():
            if rpi.fullmatch(k):
                ws = int(round(v.shape[0] ** 0.5))
                if v.shape != (ws * ws, ws * ws) or not torch.equal(v.long(), relative_position_index(ws)):
                    raise UserError(f"{k}: relative_position_index is not the standard one for window {ws}")
                used.add(k)
        return used

    return KeyMap(rules=rules, ignore=ignore, fixups=[merging, check_index])


def load_swin_pretrained(model, pretrained: str) -> None:
    """Load ImageNet weights into a SwinTransformer: a local file (mmseg naming from swin2mmseg,
    a full mmseg segmentation checkpoint, or original Swin) or `timm:<model name>`.

    Classifier head and final norm are dropped; the output norms norm0..3 keep their init (the
    pretrained models have none), as in mmseg. Shapes must match (same window size)."""
    if pretrained.startswith("timm:"):
        import timm

        src = timm.create_model(pretrained.split(":", 1)[1], pretrained=True).state_dict()
    else:
        from ctxseg.models.backbones.pretrained import source_state  # noqa: I001 (a sibling module)

        src = source_state(pretrained, None)  # a path, a URL or an `official:` registry entry
    if any(k.startswith("backbone.") for k in src):
        src = {k[len("backbone.") :]: v for k, v in src.items() if k.startswith("backbone.")}
    order = model.stages[0].downsample.order if model.stages[0].downsample is not None else "unfold"
    km = swin_keymap(src, order, src_prefix="", dst_prefix="")
    km.ignore += [r"head\..*", r"norm\.(weight|bias)"]
    target = model.state_dict()
    out, report = apply_keymap(src, target, km)
    missing = [k for k in report.missing if not re.fullmatch(r"norm\d\..+", k)]
    if report.unused or missing or report.shape_mismatches:
        raise UserError(
            f"Pretrained weights '{pretrained}' do not fit this Swin backbone:\n"
            + report.problems().replace("target key not filled", "backbone key not filled")
        )
    model.load_state_dict(out, strict=False)
