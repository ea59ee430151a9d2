"""CAC against the official heads (../shared/golden/cac): forward, intermediates, every loss term,
and gradients, for FCN, DeepLabV3+ (separable ASPP), UperNet and OCRNet heads.

Each golden head is built as ctxseg's decode head + the CAC plug-in inside a Segmentor whose
backbone is the identity (the golden inputs are the head inputs), loaded from the official mmseg
0.x checkpoint through the `ctxseg convert cac` key table, and trained/evaluated through the
real Criterion (so the main CE is the decode term and nothing is counted twice).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ctxseg.config import validate_recipe
from ctxseg.convert.base import convert_state_dict, load_foreign
from ctxseg.convert.cac import keymap_for
from ctxseg.losses import Criterion
from ctxseg.models.context.cac import ContextAwareClassifier
from ctxseg.models.layers import resize
from ctxseg.models.segmentor import Segmentor
from tests.conftest import GOLDEN, golden

# every cac/<kind>-cac folder with a config.json is a case; its head type is read from config.json
HEADS = sorted(p.parent.name.removesuffix("-cac") for p in (GOLDEN / "cac").glob("*-cac/config.json"))
HEAD_TYPES = {"FCNHeadCAC": "fcn", "DepthwiseSeparableASPPHeadCAC": "aspp", "UPerHeadCAC": "uper", "OCRHeadCAC": "ocr"}


def test_cases_are_discovered():
    assert {"fcn", "aspp", "uper", "ocr"} <= set(HEADS)


def _head(case: str, cfg: dict) -> tuple[nn.Module, str]:
    hc = cfg["head_cfg"]
    n = hc["num_classes"]
    assert hc["type"] in HEAD_TYPES, f"{case}: no ctxseg head for {hc['type']} (extend HEAD_TYPES and _head)"
    kind = HEAD_TYPES[hc["type"]]
    if kind == "fcn":
        from ctxseg.models.heads.fcn import FCNHead

        chans = [1, 1, 1, hc["in_channels"]]
        return FCNHead(in_channels=chans, num_classes=n, channels=hc["channels"], num_convs=hc["num_convs"], concat_input=hc["concat_input"],
                       in_index=hc["in_index"], dropout_ratio=hc["dropout_ratio"]), "fcn"
    if kind == "aspp":
        from ctxseg.models.heads.sep_aspp import SepASPPHead

        chans = [hc["c1_in_channels"], 1, 1, hc["in_channels"]]
        return SepASPPHead(in_channels=chans, num_classes=n, channels=hc["channels"], dilations=tuple(hc["dilations"]),
                           c1_in_channels=hc["c1_in_channels"], c1_channels=hc["c1_channels"], in_index=hc["in_index"],
                           dropout_ratio=hc["dropout_ratio"]), "sep_aspp"
    if kind == "uper":
        from ctxseg.models.heads.uper import UPerHead

        return UPerHead(in_channels=hc["in_channels"], num_classes=n, channels=hc["channels"], pool_scales=tuple(hc["pool_scales"]),
                        in_index=hc["in_index"], dropout_ratio=hc["dropout_ratio"]), "uper"
    from ctxseg.models.heads.ocr import OCRHead

    pc = cfg["prev_head_cfg"]
    region = dict(channels=pc["channels"], kernel_size=pc["kernel_size"], num_convs=pc["num_convs"],
                  concat_input=pc["concat_input"], dropout_ratio=pc["dropout_ratio"], in_index=pc["in_index"],
                  input_transform=pc["input_transform"])
    return OCRHead(in_channels=hc["in_channels"], num_classes=n, channels=hc["channels"], ocr_channels=hc["ocr_channels"], in_index=hc["in_index"],
                   input_transform=hc["input_transform"], dropout_ratio=hc["dropout_ratio"], region_head=region), "ocr"


class Loaded:
    def __init__(self, kind: str):
        folder = golden("cac", f"{kind}-cac")
        self.cfg = json.loads((folder / "config.json").read_text())
        self.io = load_file(str(folder / "io.safetensors"))
        self.n = self.cfg["head_cfg"]["num_classes"]
        head, head_type = _head(kind, self.cfg)
        self.model = Segmentor(nn.Identity(), head, None, {"cac": ContextAwareClassifier(classifier=head.classifier_slot(), num_classes=self.n)}, self.n, False)
        self.recipe = validate_recipe({
            "name": f"golden-{kind}",
            "data": {"num_classes": self.n},
            "model": {"backbone": {"type": "resnet"}, "head": {"type": head_type}, "plugins": [{"type": "cac"}]},
        })
        src = load_foreign(folder / "checkpoint.pth")
        state, self.report = convert_state_dict(src, self.model, keymap_for(self.recipe, src))
        assert self.report.ok, self.report.problems()
        self.model.load_state_dict(state, strict=True)
        self.criterion = Criterion(self.recipe)
        length = self.cfg["inputs_list_length"]
        self.inputs = [torch.zeros(1)] * length
        for idx, spec in self.cfg["inputs"].items():
            self.inputs[int(idx)] = self.io[spec["name"]].clone()
        self.labels = self.io["input.gt_semantic_seg"].squeeze(1).long()

    @property
    def plugin(self):
        return self.model.plugins["cac"]

    def param(self, name: str) -> torch.Tensor:
        """Golden parameter names are the official head's; proj/apd_proj live in the plug-in."""
        if name.startswith(("proj.", "apd_proj.")):
            return self.model.plugins["cac"].get_parameter(name)
        return self.model.decode_head.get_parameter(name)

    def train_mode(self):
        """head.train() with every BN and Dropout2d in eval mode (the golden's 'train' mode)."""
        self.model.train()
        for m in self.model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.Dropout2d)):
                m.eval()


_CACHE: dict[str, Loaded] = {}


def loaded(kind: str) -> Loaded:
    if kind not in _CACHE:
        _CACHE[kind] = Loaded(kind)
    return _CACHE[kind]


def close(a, b, atol, rtol=1e-4, what=""):
    a, b = a.detach().float().reshape(b.shape), b.float()
    err = (a - b).abs().max().item() if b.numel() else 0.0
    assert torch.allclose(a, b, atol=atol, rtol=rtol), f"{what}: max abs err {err:.3g}"


def close_grad(g, ref, scale=1e-4, what=""):
    g = torch.zeros_like(ref) if g is None else g.detach().reshape(ref.shape)
    atol = scale * ref.abs().max().item()
    err = (g - ref).abs().max().item()
    assert torch.allclose(g, ref, atol=max(atol, 1e-12), rtol=1e-3), f"{what}: max abs err {err:.3g} (atol {atol:.3g})"


LOSS_KEYS = {"main": "loss_ce", "pre_self": "loss_cac_pre_self", "pre": "loss_cac_pre", "kl": "loss_cac_kl"}


@pytest.mark.parametrize("kind", HEADS)
def test_conversion_is_complete(kind):
    L = loaded(kind)
    assert not L.report.missing and not L.report.unused and not L.report.ignored
    assert L.report.mapped == L.report.source_keys


@pytest.mark.parametrize("kind", HEADS)
def test_eval_forward(kind):
    L, io = loaded(kind), loaded(kind).io
    L.model.eval()
    with torch.no_grad():
        out = L.model(L.inputs)
        parts = L.plugin.refine(out["feats"], out["vanilla_logits"])
    close(out["feats"], io["test.feat"], 1e-5, what="feat")
    close(out["vanilla_logits"], io["test.vanilla_logits"], 1e-4, what="vanilla")
    close(parts["class_centres"], io["test.refine.class_centers"], 1e-5, what="centres")
    close(parts["proto"], io["test.refine.proto"], 1e-5, what="proto")
    close(out["logits"], io["test.seg_logits"], 1e-4, what="refined logits")
    img = resize(out["logits"], L.labels.shape[-2:], False)
    close(img, io["test.seg_logits_img"], 1e-4, what="logits at image size")
    if kind == "ocr":
        close(out["aux_logits"], io["test.prev_output"], 1e-4, what="prev_output")


def _train_forward(L):
    L.train_mode()
    out = L.model(L.inputs, L.labels)
    total, _ = L.criterion(L.model, out, L.labels, 0)
    terms = dict(L.model.plugin_losses(out, L.labels, 0))
    terms["loss_ce"] = L.criterion.ce(out["logits"], L.labels)
    return out, total, terms


@pytest.mark.parametrize("kind", HEADS)
def test_train_forward_intermediates_and_losses(kind):
    L, io = loaded(kind), loaded(kind).io
    with torch.no_grad():
        out, total, terms = _train_forward(L)
        plug = L.plugin
        labels = out["cac_labels"]
        apd = plug.adaptive_perspective(out["feats"], labels)
        kl = plug.kl_terms(out["logits"], out["cac_apd_logits"], labels)
    close(out["feats"], io["train.feat"], 1e-5, what="feat")
    close(out["vanilla_logits"], io["train.vanilla_logits"], 1e-4, what="vanilla")
    close(out["logits"], io["train.refined_logits"], 1e-4, what="refined")
    # label-derived tensors: exact
    assert torch.equal(labels, io["train.apd.labels_down"].squeeze(1).long())
    classes = apd["present"].nonzero().flatten()
    assert torch.equal(classes, io["train.apd.classes"].long())
    assert torch.equal(kl["present"].nonzero().flatten(), io["train.kl.classes"].long())
    close(apd["class_rows"], io["train.apd.class_centers"], 1e-5, what="apd rows")
    close(apd["proto"], io["train.apd.proto"], 1e-5, what="apd proto")
    close(out["cac_apd_logits"], io["train.apd_pred"], 1e-4, what="apd_pred")
    close(kl["smoothed_label"], io["train.kl.smoothed_label"], 1e-5, what="smoothed label")
    onehot_half = io["train.kl.smoothed_label"] - 0.5 * out["cac_apd_logits"].softmax(1)
    assert torch.equal((onehot_half > 0.25).float(), (kl["smoothed_label"] - 0.5 * out["cac_apd_logits"].softmax(1) > 0.25).float())
    close(kl["entropy_mask"], io["train.kl.entropy_mask"], 1e-5, what="entropy mask")
    close(kl["per_class"][kl["present"]], io["train.kl.per_class_loss"], 1e-6, 1e-5, what="per-class kl")
    for name, key in LOSS_KEYS.items():
        close(terms[key], io[f"train.loss.{name}"], 1e-6, 1e-5, what=f"loss {name}")
    if kind == "ocr":
        # cascade: decode_head.0 (weight 0.4 = aux_weight) is part of the Criterion total
        decode0 = L.recipe.train.loss.aux_weight * L.criterion.ce(out["aux_logits"], L.labels)  # golden holds it x0.4
        close(decode0, io["train.decode0.loss_ce"], 1e-6, 1e-5, what="decode0")
        close(total, io["train.loss.cascade_total"], 1e-6, 1e-5, what="cascade total")
    else:
        close(total, io["train.loss.total"], 1e-6, 1e-5, what="total")
    # mmseg accuracy of the refined logits: ignored pixels count in the denominator
    pred = resize(out["logits"], L.labels.shape[-2:], False).argmax(1)
    acc = (pred == L.labels).float().sum() * 100.0 / L.labels.numel()
    close(acc, io["train.acc_seg"], 1e-4, 1e-5, what="acc_seg")


def _grad_inputs(L, kind):
    """Leaf tensors whose gradients the golden stores: the head inputs (and OCR's prev_output)."""
    leaves = {}
    inputs = list(L.inputs)
    for idx, spec in L.cfg["inputs"].items():
        t = L.io[spec["name"]].clone().requires_grad_(True)
        inputs[int(idx)] = t
        leaves[spec["name"]] = t
    return inputs, leaves


def _ocr_forward_with_prev(L, inputs, prev):
    """OCRHeadCAC(inputs, prev_output): the cascade stage with an explicit prev_output leaf."""
    head = L.model.decode_head
    feats = head.features(inputs, prev)
    out = {"logits": head.cls_seg(feats), "feats": feats}
    out.update(L.plugin(out, inputs, L.labels))
    return out


@pytest.mark.parametrize("kind", HEADS)
def test_gradients(kind):
    L, io = loaded(kind), loaded(kind).io
    L.train_mode()
    inputs, leaves = _grad_inputs(L, kind)
    if kind == "ocr":
        prev = io["test.prev_output"].clone().requires_grad_(True)
        leaves["input.prev_output"] = prev
        out = _ocr_forward_with_prev(L, inputs, prev)
    else:
        out = L.model(inputs, L.labels)
    terms = dict(L.model.plugin_losses(out, L.labels, 0))
    terms["loss_ce"] = L.criterion.ce(out["logits"], L.labels)
    terms["total"] = sum(terms.values())
    prefix = "train.grad."
    names = {"main": "loss_ce", "pre_self": "loss_cac_pre_self", "pre": "loss_cac_pre", "kl": "loss_cac_kl", "total": "total"}
    checked = 0
    for gname, key in names.items():
        refs = {k[len(prefix) + len(gname) + 1:]: v for k, v in io.items() if k.startswith(f"{prefix}{gname}.")}
        if not refs:
            continue
        targets = []
        for k in refs:
            if k.startswith("input."):
                targets.append(leaves[k])
            else:
                targets.append(L.param(k[len("param."):]))
        grads = torch.autograd.grad(terms[key], targets, retain_graph=True, allow_unused=True)
        for (k, ref), g in zip(refs.items(), grads):
            scale = 1e-3 if ".object_context_block." in f".{k}" else 1e-4
            close_grad(g, ref, scale, what=f"d {gname} / d {k}")
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize("kind", ["ocr"])
def test_ocr_cascade_gradients(kind):
    """Cascade total (decode_head.0 at weight 0.4 + CAC head, prev_output not detached) w.r.t. inputs."""
    L, io = loaded(kind), loaded(kind).io
    L.train_mode()
    inputs, leaves = _grad_inputs(L, kind)
    out = L.model(inputs, L.labels)
    total, _ = L.criterion(L.model, out, L.labels, 0)
    refs = {k[len("train.grad.cascade_total."):]: v for k, v in io.items() if k.startswith("train.grad.cascade_total.")}
    grads = torch.autograd.grad(total, [leaves[k] for k in refs])
    for (k, ref), g in zip(refs.items(), grads):
        close_grad(g, ref, what=f"d cascade_total / d {k}")


@pytest.mark.parametrize("kind", ["fcn", "aspp", "uper"])
def test_train_with_fixed_dropout_mask(kind):
    """Dropout only touches the vanilla logits; refinement and APD use the pre-dropout feat."""
    L, io = loaded(kind), loaded(kind).io
    L.train_mode()
    head = L.model.decode_head
    mask = io["train_dropout.mask"]

    class FixedMask(nn.Module):
        def forward(self, x):
            return x * mask

    saved = head.dropout
    head.dropout = FixedMask()
    try:
        with torch.no_grad():
            out = L.model(L.inputs, L.labels)
            terms = dict(L.model.plugin_losses(out, L.labels, 0))
            terms["loss_ce"] = L.criterion.ce(out["logits"], L.labels)
    finally:
        head.dropout = saved
    close(out["vanilla_logits"], io["train_dropout.vanilla_logits"], 1e-4, what="vanilla")
    close(out["logits"], io["train_dropout.refined_logits"], 1e-4, what="refined")
    for name, key in LOSS_KEYS.items():
        close(terms[key], io[f"train_dropout.loss.{name}"], 1e-6, 1e-5, what=f"loss {name}")
    close(sum(terms.values()), io["train_dropout.loss.total"], 1e-6, 1e-5, what="total")
