"""CAC's vectorised ops vs a naive per-class loop (the reference's algorithm), robustness on
absent classes / all-ignore labels, composability, and an ONNX export of the test-time path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctxseg.models.context.cac import ContextAwareClassifier
from ctxseg.models.heads.fcn import FCNHead
from ctxseg.models.segmentor import Segmentor


def _model(c_in=12, ch=10, n=9, dropout=0.0, seed=0, **cac_kw):
    torch.manual_seed(seed)
    head = FCNHead(
        in_channels=[c_in],
        num_classes=n,
        channels=ch,
        num_convs=1,
        concat_input=False,
        in_index=0,
        dropout_ratio=dropout,
    )
    plugin = ContextAwareClassifier(classifier=head.classifier_slot(), num_classes=n, **cac_kw)
    return Segmentor(nn.Identity(), head, None, {"cac": plugin}, n, False)


def _labels(b, h, w, n, seed, ignore_frac=0.1):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n - 2, (b, h, w), generator=g)  # the last two classes absent
    y[torch.rand(b, h, w, generator=g) < ignore_frac] = 255
    return y


# ------------------------------------------------------------------------------------------
# naive reference-style loops (float64)


def naive_refine(feat, vanilla, w, proj, eps_mode="eps"):
    b, c, h, wd = feat.shape
    n = w.shape[0]
    out = torch.zeros(b, n, h, wd, dtype=feat.dtype)
    for i in range(b):
        x = feat[i].reshape(c, -1)
        p = vanilla[i].reshape(n, -1).softmax(0)
        centres = torch.stack([(p[k] * x).sum(1) / (p[k].sum() + 1e-12) for k in range(n)])
        proto = proj(torch.cat([centres, w], 1))
        for k in range(n):
            pk = proto[k] / (proto[k].norm() + 1e-12)
            for j in range(h * wd):
                v = x[:, j] / (x[:, j].norm() + 1e-12)
                out[i, k].view(-1)[j] = 15 * (pk * v).sum()
    return out


def naive_apd(feat, labels_down, w, apd_proj):
    rows = w.detach().clone()
    present = []
    for k in sorted(set(labels_down.unique().tolist()) - {255}):
        m = (labels_down == k).unsqueeze(1).to(feat.dtype)  # b,1,h,w
        rows[k] = (feat * m).sum((0, 2, 3)) / (m.sum() + 1e-12)
        present.append(k)
    proto = apd_proj(torch.cat([rows, w], 1))
    pred = F.conv2d(F.normalize(feat, dim=1), F.normalize(proto, dim=1)[:, :, None, None]) * 15
    return rows, present, pred


def naive_kl(pred, soft, target, n, smooth=0.5):
    sm = soft.softmax(1)
    t = target.clone()
    t[t == 255] = 0
    onehot = F.one_hot(t, n).permute(0, 3, 1, 2).to(pred.dtype)
    smoothed = smooth * sm + (1 - smooth) * onehot
    loss = (-F.log_softmax(pred, 1) * smoothed).sum(1)
    ent = -(sm * torch.log(sm + 1e-12)).sum(1) * (target != 255).to(pred.dtype)
    per = []
    for k in sorted(set(target.unique().tolist()) - {255}):
        em = ent * (target == k).to(pred.dtype)
        per.append((loss * em).sum() / (em.sum() + 1e-12))
    return (sum(per) / (len(per) + 1e-12)) if per else torch.zeros((), dtype=pred.dtype)


@pytest.mark.parametrize("seed,b,h,w,n", [(1, 3, 5, 7, 9), (2, 1, 6, 4, 4), (3, 2, 3, 8, 11)])
def test_vectorised_equals_naive_loops(seed, b, h, w, n):
    model = _model(n=n, seed=seed).double().train()
    plug = model.plugins["cac"]
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(b, 10, h, w, generator=g, dtype=torch.float64)
    vanilla = torch.randn(b, n, h, w, generator=g, dtype=torch.float64)
    labels = _labels(b, 4 * h, 4 * w, n, seed)
    wt = plug.classifier_weight()
    with torch.no_grad():
        ref = naive_refine(feat, vanilla, wt, plug.proj)
        got = plug.refine(feat, vanilla)["logits"]
        assert torch.allclose(got, ref, atol=1e-10)
        down = plug.labels_down(labels, (h, w))
        # legacy nearest: source index floor(i * in / out)
        assert torch.equal(down, labels[:, ::4, ::4])
        rows, present, apd_ref = naive_apd(feat, down, wt, plug.apd_proj)
        apd = plug.adaptive_perspective(feat, down)
        assert torch.allclose(apd["class_rows"], rows, atol=1e-12)
        assert apd["present"].nonzero().flatten().tolist() == present
        assert torch.allclose(apd["logits"], apd_ref, atol=1e-10)
        kl = plug.kl_terms(got, apd["logits"], down)["loss"]
        assert torch.allclose(kl, naive_kl(got, apd["logits"], down, n), atol=1e-12)


def test_gradient_paths_equal_naive():
    """Gradients through the masked batch means equal the loop's (present rows only)."""
    model = _model(n=6, seed=5).double().train()
    plug = model.plugins["cac"]
    feat = torch.randn(2, 10, 4, 5, dtype=torch.float64, requires_grad=True)
    down = _labels(2, 4, 5, 6, 7)
    wt = plug.classifier_weight()
    _, _, ref = naive_apd(feat, down, wt, plug.apd_proj)
    param = model.decode_head.conv_seg.weight
    g_ref = torch.autograd.grad(ref.square().sum(), [feat, param])
    got = plug.adaptive_perspective(feat, down)["logits"]
    g = torch.autograd.grad(got.square().sum(), [feat, param])
    for a, r in zip(g, g_ref):
        assert torch.allclose(a, r, atol=1e-10)


# ------------------------------------------------------------------------------------------
# robustness: absent classes, all-ignore batches, empty class lists, zero features


def _step(model, x, y):
    from ctxseg.losses.cross_entropy import seg_ce_term

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(x, y)
    terms = model.plugin_losses(out, y, 0)
    loss = seg_ce_term(out["logits"], y, False) + sum(terms.values())
    opt.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    opt.step()
    return loss, terms, grads


@pytest.mark.parametrize("case", ["all_ignore", "one_class", "absent_classes"])
def test_finite_and_trainable(case):
    model = _model(n=5, dropout=0.1, seed=3).train()
    x = [torch.randn(2, 12, 6, 6)]
    y = torch.full((2, 24, 24), 255, dtype=torch.long)
    if case == "one_class":
        y[:, :12] = 2
    elif case == "absent_classes":
        y = _labels(2, 24, 24, 5, 0)
    before = [p.detach().clone() for p in model.parameters()]
    loss, terms, grads = _step(model, x, y)
    assert torch.isfinite(loss) and all(torch.isfinite(t) for t in terms.values())
    assert all(torch.isfinite(g).all() for g in grads)
    if case == "all_ignore":
        assert all(float(t.detach()) == 0.0 for t in terms.values())
    else:
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)["logits"]).all()


def test_zero_feature_vectors_stay_finite():
    """The reference OCR/DeepLabV3+ heads divide by the bare norm (NaN here); the default does not."""
    model = _model(n=4, seed=1).eval()
    head = model.decode_head
    feat = torch.randn(1, 10, 3, 3)
    feat[..., 0, 0] = 0
    vanilla = head.conv_seg(feat)
    assert torch.isfinite(model.plugins["cac"].refine(feat, vanilla)["logits"]).all()
    literal = _model(n=4, seed=1, l2_mode="bare").eval()
    assert torch.isnan(literal.plugins["cac"].refine(feat, vanilla)["logits"]).any()


def test_state_dict_and_outputs_contract():
    model = _model(n=4, seed=2)
    keys = list(model.state_dict())
    assert any(k.startswith("plugins.cac.proj.") for k in keys)
    assert not any(k.startswith("plugins.cac.") and "conv_seg" in k for k in keys)  # head not duplicated
    model.eval()
    out = model([torch.randn(1, 12, 5, 5)])
    assert set(out) >= {"logits", "vanilla_logits", "feats"} and "cac_apd_logits" not in out
    assert model.plugin_losses(out, torch.zeros(1, 20, 20, dtype=torch.long), 0) == {}


def test_recipe_builds_segmentor_with_cac():
    from ctxseg.config import validate_recipe
    from ctxseg.models.segmentor import build_segmentor

    recipe = validate_recipe(
        {
            "data": {"num_classes": 5},
            "model": {
                "backbone": {"type": "resnet", "depth": 18, "stem_channels": 8, "base_channels": 8},
                "head": {
                    "type": "sep_aspp",
                    "in_index": 3,
                    "channels": 16,
                    "c1_in_channels": 8,
                    "c1_channels": 4,
                    "dilations": [1, 2, 3],
                },
                "plugins": [{"type": "cac", "kl_weight": 0.5}],
            },
        }
    )
    model = build_segmentor(recipe).eval()
    assert model.plugins["cac"].weights["kl"] == 0.5
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out["logits"].shape == (1, 5, 8, 8)


def test_onnx_export_of_test_path(tmp_path):
    onnx = pytest.importorskip("onnx")  # noqa: F841 - declared in pyproject [test]
    ort = pytest.importorskip("onnxruntime")

    class Wrapped(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m([x])["logits"]

    model = Wrapped(_model(n=5, seed=4)).eval()
    x = torch.randn(2, 12, 6, 7)
    path = tmp_path / "cac.onnx"
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamo=False,
        dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}},
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2 = torch.randn(1, 12, 9, 5)
    (got,) = sess.run(None, {"x": x2.numpy()})
    with torch.no_grad():
        ref = model(x2)
    assert torch.allclose(torch.from_numpy(got), ref, atol=1e-4)


def test_project_onnx_exporter_with_cac(tmp_path):
    """`ctxseg convert onnx`'s graph (Segmentor eval -> logits -> resize) with the CAC plug-in."""
    pytest.importorskip("onnxruntime")
    from ctxseg.config import load_recipe
    from ctxseg.convert.onnx import check_with_onnxruntime, export_onnx
    from ctxseg.models.segmentor import build_segmentor
    from tests.conftest import REPO

    recipe = load_recipe(str(REPO / "tests" / "recipes" / "cac_fcn_tiny.toml"))
    torch.manual_seed(0)
    model = build_segmentor(recipe).eval()
    path = export_onnx(model, recipe, tmp_path / "cac.onnx", 32, 48)
    err, scale = check_with_onnxruntime(model, recipe, path, 32, 48)
    assert err <= 1e-4 * max(scale, 1.0)
