"""CAC against the official heads (../shared/golden/cac), driven by the data: every `cac/*-cac`
folder with a config.json is a case. Its model is built from its own config.json
(tests/golden_cases.py cac_recipe: ctxseg's decode head + the CAC plug-in on an identity backbone,
the golden inputs being the head inputs), loaded from the official mmseg 0.x checkpoint through
the `ctxseg convert cac` key table, and run eval / train / backward / with a fixed dropout mask
through the real Criterion. Each group function computes ctxseg's counterpart of every stored
tensor under its golden name; the tests compare each within the README's tolerance for its kind,
and fail naming any stored tensor that has no counterpart (tests/golden_cases.py GOLDEN_INPUTS
lists the inputs).
"""

from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import nn

from ctxseg.config import validate_recipe
from ctxseg.convert.base import convert_state_dict, load_foreign
from ctxseg.convert.cac import keymap_for
from ctxseg.losses import Criterion
from ctxseg.models.builder import build_component, plugin_name
from ctxseg.models.layers import resize
from ctxseg.models.segmentor import Segmentor, data_facts
from tests.conftest import golden
from tests.golden_cases import Stored, cac_case_folders, cac_config, cac_recipe, cac_tolerances

CASES = cac_case_folders()
TOL = cac_tolerances()
LABEL_DERIVED = {"train.apd.labels_down", "train.apd.classes", "train.kl.classes"}  # README: exact
# golden loss names -> ctxseg's loss terms (the main CE is the Criterion's decode term)
LOSS_TERMS = {"main": "loss_ce", "pre_self": "loss_cac_pre_self", "pre": "loss_cac_pre", "kl": "loss_cac_kl"}


def test_cases_are_discovered():
    assert {"fcn-cac", "aspp-cac", "uper-cac", "ocr-cac"} <= set(CASES)


def kind_of(key: str) -> str:
    """The README's tolerance class of a stored tensor."""
    if key.startswith("train.grad."):
        return "grad_ocr_context" if ".object_context_block." in key else "grad"
    if key in LABEL_DERIVED:
        return "exact"
    if ".loss." in key or key.endswith(("acc_seg", "per_class_loss", "loss_ce")):
        return "scalar"
    if "logits" in key or key.endswith(("apd_pred", "prev_output")):
        return "logits"
    return "features"  # feat, class centres, prototypes, smoothed label, entropy mask


def compare(ours: torch.Tensor, ref: torch.Tensor, key: str) -> str | None:
    """None if ours matches the stored value within its kind's tolerance, else the reason."""
    kind = kind_of(key)
    atol, rtol = TOL[kind]
    if kind.startswith("grad"):  # atol is a fraction of the tensor's largest magnitude
        atol = max(atol * ref.abs().max().item(), 1e-12)
    ours = ours.detach().float().reshape(ref.shape)
    if kind == "exact":
        return None if torch.equal(ours, ref.float()) else f"{key}: not equal (label-derived tensors are exact)"
    if torch.allclose(ours, ref.float(), atol=atol, rtol=rtol):
        return None
    return f"{key}: max abs err {(ours - ref).abs().max().item():.3g} (atol {atol:.3g}, rtol {rtol:.3g}, {kind})"


class Case:
    """One golden head: the ctxseg model built from config.json and loaded from checkpoint.pth."""

    def __init__(self, case: str):
        self.case = case
        self.cfg = cac_config(case)
        self.stored = Stored("cac", "cac", case, "io.safetensors")
        self.recipe = validate_recipe(cac_recipe(case))
        # channel list of the head inputs as the golden stores them (unused list slots: 1 channel)
        chans = [1] * self.cfg["inputs_list_length"]
        for idx, spec in self.cfg["inputs"].items():
            chans[int(idx)] = spec["shape"][1]
        facts = data_facts(self.recipe)
        common = dict(num_classes=facts.num_classes, ignore_index=facts.ignore_index, align_corners=facts.align_corners)
        m = self.recipe.model
        head = build_component("head", m.head, in_channels=chans, **common)
        plugins = {
            plugin_name(p): build_component(
                "plugin", p, in_channels=chans, head=head, classifier=head.classifier_slot(), **common
            )
            for p in m.plugins
        }
        self.model = Segmentor(nn.Identity(), head, None, plugins, facts.num_classes, facts.align_corners)
        src = load_foreign(golden("cac", case, "checkpoint.pth"))
        state, self.report = convert_state_dict(src, self.model, keymap_for(self.recipe, src))
        assert self.report.ok, self.report.problems()
        self.model.load_state_dict(state, strict=True)
        self.criterion = Criterion(self.recipe)
        self.inputs = [torch.zeros(1)] * len(chans)
        for idx, spec in self.cfg["inputs"].items():
            self.inputs[int(idx)] = self.stored[spec["name"]].clone()
        self.labels = self.stored["input.gt_semantic_seg"].squeeze(1).long()
        self.is_cascade = "prev_head_cfg" in self.cfg

    @property
    def plugin(self):
        return self.model.plugins["cac"]

    def param(self, name: str) -> torch.Tensor:
        """Golden parameter names are the official head's; proj/apd_proj live in the plug-in."""
        if name.startswith(("proj.", "apd_proj.")):
            return self.plugin.get_parameter(name)
        return self.model.decode_head.get_parameter(name)

    def train_mode(self) -> None:
        """head.train() with every BN and Dropout2d in eval mode (the golden's 'train' mode)."""
        self.model.train()
        for mod in self.model.modules():
            if isinstance(mod, (nn.BatchNorm2d, nn.Dropout2d)):
                mod.eval()

    def losses(self, out: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The Criterion's total and the golden loss terms (main, pre_self, pre, kl, total = the CAC
        head's loss_ce; cascade: decode0 = the region head's term, cascade_total = the Criterion's total)."""
        total, logged = self.criterion(self.model, out, self.labels, 0)
        plug = self.model.plugin_losses(out, self.labels, 0)
        terms = {name: plug[key] for name, key in LOSS_TERMS.items() if key != "loss_ce"}
        terms["main"] = self.recipe.train.loss.decode_weight * self.criterion.ce(out["logits"], self.labels)
        assert logged["loss_ce"] == pytest.approx(float(terms["main"].detach()), rel=1e-6)
        terms["total"] = sum(terms.values())
        if self.is_cascade and "aux_logits" in out:
            terms["decode0"] = total - terms["total"]  # the Criterion's region-head (aux) term
            assert float(terms["decode0"].detach()) == pytest.approx(logged["loss_aux"], rel=1e-5, abs=1e-7)
            terms["cascade_total"] = total
        else:
            assert torch.allclose(total, terms["total"], rtol=1e-6, atol=1e-7)  # the Criterion adds nothing else
        return total, terms

    def accuracy(self, logits: torch.Tensor) -> torch.Tensor:
        """mmseg 0.19 accuracy: ignored pixels count in the denominator."""
        pred = resize(logits, self.labels.shape[-2:], self.recipe.model.align_corners).argmax(1)
        return (pred == self.labels).float().sum() * 100.0 / self.labels.numel()


@cache
def loaded(case: str) -> Case:
    return Case(case)


def _eval(c: Case) -> dict[str, torch.Tensor]:
    c.model.eval()
    with torch.no_grad():
        out = c.model(c.inputs)
        parts = c.plugin.refine(out["feats"], out["vanilla_logits"])
    res = {
        "test.feat": out["feats"],
        "test.vanilla_logits": out["vanilla_logits"],
        "test.refine.class_centers": parts["class_centres"],
        "test.refine.proto": parts["proto"],
        "test.seg_logits": out["logits"],
        "test.seg_logits_img": resize(out["logits"], c.labels.shape[-2:], False),
    }
    if c.is_cascade:
        res["test.prev_output"] = out["aux_logits"]
    return res


def _train(c: Case) -> dict[str, torch.Tensor]:
    c.train_mode()
    with torch.no_grad():
        out = c.model(c.inputs, c.labels)
        _, terms = c.losses(out)
        parts = c.plugin.refine(out["feats"], out["vanilla_logits"])
        labels = out["cac_labels"]
        apd = c.plugin.adaptive_perspective(out["feats"], labels)
        kl = c.plugin.kl_terms(out["logits"], out["cac_apd_logits"], labels)
    res = {
        "train.feat": out["feats"],
        "train.vanilla_logits": out["vanilla_logits"],
        "train.refine.class_centers": parts["class_centres"],
        "train.refine.proto": parts["proto"],
        "train.refined_logits": out["logits"],
        "train.apd.labels_down": labels[:, None],
        "train.apd.classes": apd["present"].nonzero().flatten(),
        "train.apd.class_centers": apd["class_rows"],
        "train.apd.proto": apd["proto"],
        "train.apd_pred": out["cac_apd_logits"],
        "train.kl.classes": kl["present"].nonzero().flatten(),
        "train.kl.smoothed_label": kl["smoothed_label"],
        "train.kl.entropy_mask": kl["entropy_mask"],
        "train.kl.per_class_loss": kl["per_class"][kl["present"]],
        "train.acc_seg": c.accuracy(out["logits"]),
    }
    res.update({f"train.loss.{name}": terms[name] for name in (*LOSS_TERMS, "total")})
    if c.is_cascade:
        res.update(
            {
                "train.decode0.loss_ce": terms["decode0"],
                "train.decode0.acc_seg": c.accuracy(out["aux_logits"]),
                "train.loss.cascade_total": terms["cascade_total"],
            }
        )
    # the one-hot half of the smoothed label is label-derived: exact
    ref = c.stored.tensors["train.kl.smoothed_label"]
    soft = 0.5 * out["cac_apd_logits"].softmax(1)
    assert torch.equal((ref - soft > 0.25), (kl["smoothed_label"] - soft > 0.25)), "one-hot half of the smoothed label"
    return res


def _grad_leaves(c: Case) -> tuple[list, dict]:
    inputs, leaves = list(c.inputs), {}
    for idx, spec in c.cfg["inputs"].items():
        inputs[int(idx)] = leaves[spec["name"]] = c.stored[spec["name"]].clone().requires_grad_(True)
    return inputs, leaves


def _gradients(c: Case) -> dict[str, torch.Tensor]:
    """d term / d input and d term / d parameter for every term the golden stores gradients of.
    Cascade (OCR): the single terms are the CAC stage's, OCRHeadCAC(inputs, prev_output) with
    prev_output a leaf of its own; cascade_total runs the whole model (prev_output not detached)."""
    prefix = "train.grad."
    by_term: dict[str, list[str]] = {}
    for key in c.stored.keys():
        if key.startswith(prefix):
            by_term.setdefault(key[len(prefix) :].split(".", 1)[0], []).append(key)
    res = {}
    c.train_mode()
    for whole_model in (False, True):
        wanted = {t: keys for t, keys in by_term.items() if (t == "cascade_total") == whole_model}
        if not wanted:
            continue
        inputs, leaves = _grad_leaves(c)
        if c.is_cascade and not whole_model:
            prev = leaves["input.prev_output"] = c.stored.tensors["test.prev_output"].clone().requires_grad_(True)
            head = c.model.decode_head
            feats = head.features(inputs, prev)
            out = {"logits": head.cls_seg(feats), "feats": feats}
            out.update(c.plugin(out, inputs, c.labels))
        else:
            out = c.model(inputs, c.labels)
        _, terms = c.losses(out)
        for term, keys in wanted.items():
            names = [k[len(prefix) + len(term) + 1 :] for k in keys]
            targets = [leaves[n] if n.startswith("input.") else c.param(n[len("param.") :]) for n in names]
            grads = torch.autograd.grad(terms[term], targets, retain_graph=True, allow_unused=True)
            for key, t, g in zip(keys, targets, grads):
                res[key] = torch.zeros_like(t) if g is None else g  # the golden stores zeros where there is no path
    return res


def _fixed_dropout(c: Case) -> dict[str, torch.Tensor]:
    """Dropout only touches the vanilla logits; refinement and APD use the pre-dropout feat."""
    if not any(k.startswith("train_dropout.") for k in c.stored.keys()):
        return {}
    c.train_mode()
    head = c.model.decode_head
    mask = c.stored["train_dropout.mask"]

    class FixedMask(nn.Module):
        def forward(self, x):
            return x * mask

    saved, head.dropout = head.dropout, FixedMask()
    try:
        with torch.no_grad():
            out = c.model(c.inputs, c.labels)
            _, terms = c.losses(out)
    finally:
        head.dropout = saved
    res = {"train_dropout.vanilla_logits": out["vanilla_logits"], "train_dropout.refined_logits": out["logits"]}
    res.update({f"train_dropout.loss.{name}": terms[name] for name in (*LOSS_TERMS, "total")})
    return res


GROUPS = {"test": _eval, "train": _train, "train.grad": _gradients, "train_dropout": _fixed_dropout}


def _group_of(key: str) -> str:
    return "train.grad" if key.startswith("train.grad.") else key.split(".", 1)[0]


@pytest.mark.parametrize("case", CASES)
def test_conversion_is_complete(case):
    c = loaded(case)
    assert not c.report.missing and not c.report.unused and not c.report.ignored
    assert c.report.mapped == c.report.source_keys


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("case", CASES)
def test_every_stored_tensor_matches(case, group):
    """Every stored tensor of the group (test / train / train.grad / train_dropout) against ctxseg's
    counterpart; a stored tensor without one fails here by name."""
    c = loaded(case)
    ours = GROUPS[group](c)
    errors = []
    for key in c.stored.keys():
        if _group_of(key) != group or c.stored.is_input(key):
            continue
        if key not in ours:
            errors.append(f"{key}: stored, but no ctxseg counterpart (map it in tests/test_cac_golden.py)")
            continue
        err = compare(ours[key], c.stored.ref(key), key)
        if err:
            errors.append(err)
    assert not errors, f"{case}: " + "; ".join(errors)
    assert set(ours) <= set(c.stored.keys()), sorted(set(ours) - set(c.stored.keys()))
    c.stored.assert_all_compared(lambda k: _group_of(k) == group)


def test_stored_groups_are_known():
    """A stored tensor in a group no test computes fails here (the groups partition every key)."""
    for case in CASES:
        s = Stored("cac", "cac", case, "io.safetensors")
        unknown = sorted(k for k in s.keys() if not s.is_input(k) and _group_of(k) not in GROUPS)
        assert not unknown, f"{case}: stored tensors in no known group: {unknown}"
