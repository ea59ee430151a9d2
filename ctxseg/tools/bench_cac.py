"""CAC head overhead: FCN head (in 512, 512 ch, 150 classes) on 2 x 512 x 64 x 64 features."""
import time

import torch
from torch import nn

from ctxseg.losses.cross_entropy import seg_ce_term
from ctxseg.models.context.cac import ContextAwareClassifier
from ctxseg.models.heads.fcn import FCNHead
from ctxseg.models.segmentor import Segmentor

import sys
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
torch.manual_seed(0)
B, C, H, W, N = 2, 512, 64, 64, 150
x = [torch.randn(B, C, H, W)]
y = torch.randint(0, N, (B, 8 * H, 8 * W))
y[:, :40] = 255


def build(with_cac):
    head = FCNHead(in_channels=[C], num_classes=N, channels=512, num_convs=2, concat_input=True, in_index=0)
    plugins = {"cac": ContextAwareClassifier(classifier=head.classifier_slot(), num_classes=N)} if with_cac else {}
    return Segmentor(nn.Identity(), head, None, plugins, N, False)


def timeit(fn, reps):
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts), sorted(ts)[len(ts) // 2]


res = {}
for with_cac in (() if "--parts" in sys.argv else (False, True)):
    m = build(with_cac)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)

    def infer():
        m.eval()
        with torch.no_grad():
            m(x)

    def train():
        m.train()
        out = m(x, y)
        loss = seg_ce_term(out["logits"], y, False) + sum(m.plugin_losses(out, y, 0).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    res[with_cac] = {"infer": timeit(infer, 4), "train": timeit(train, 2)}
    # the CAC-only part at inference: refine() on fixed feats / logits
    if with_cac:
        m.eval()
        with torch.no_grad():
            o = m.decode_head(x)
            res["refine"] = timeit(lambda: m.plugins["cac"].refine(o["feats"], o["logits"]), 10)
if "--parts" in sys.argv:
    m = build(True).eval()
    with torch.no_grad():
        o = m.decode_head(x)
        res["refine"] = timeit(lambda: m.plugins["cac"].refine(o["feats"], o["logits"]), 10)
        res["head"] = timeit(lambda: m.decode_head(x), 3)
    print(f"FCN head inference {res['head'][0]*1e3:.0f} ms (min of 3)")
print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
for k in (() if "--parts" in sys.argv else ("infer", "train")):
    a, b = res[False][k], res[True][k]
    print(f"{k}: FCN {a[0]*1e3:.0f} ms (median {a[1]*1e3:.0f}), FCN+CAC {b[0]*1e3:.0f} ms (median {b[1]*1e3:.0f}), overhead {100*(b[0]/a[0]-1):+.1f}% (min), {100*(b[1]/a[1]-1):+.1f}% (median)")
if "refine" in res: print(f"refine() alone: {res['refine'][0]*1e3:.1f} ms (min), {res['refine'][1]*1e3:.1f} ms (median)")

# CAC-only training cost: plug-in forward (refine + oracle) + its losses + main CE, fwd + bwd,
# on fixed head outputs (isolates CAC from the head's convolutions)
m = build(True).train()
plug = m.plugins["cac"]
with torch.no_grad():
    base = m.decode_head(x)


def cac_train():
    feat = base["feats"].clone().requires_grad_(True)
    vanilla = m.decode_head.conv_seg(feat)
    out = {"feats": feat, "logits": vanilla}
    out.update(plug(out, x, y))
    loss = seg_ce_term(out["logits"], y, False) + sum(plug.losses(out, y, 0).values())
    loss.backward()


def plain_train():
    feat = base["feats"].clone().requires_grad_(True)
    loss = seg_ce_term(m.decode_head.conv_seg(feat), y, False)
    loss.backward()


a, b = timeit(plain_train, 5), timeit(cac_train, 5)
print(f"classifier + losses fwd/bwd: plain conv_seg + CE {a[0]*1e3:.0f} ms, CAC (all 4 terms) {b[0]*1e3:.0f} ms (min of 5)")
