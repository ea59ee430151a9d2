"""Timing of MCIBI pieces on this machine: `python -m ctxseg.tools.bench_mcibi` (see docs/benchmarks/mcibi.md).

1. memory update: batch 2, labels 512x512, memory_input 64x64 (OS 8), 150 classes, 512 channels
2. memory-augmented head forward+backward (ASPP head + MCIBI plug-in) on 2 x 2048 x 64 x 64
3. train step (forward, losses, backward, SGD step) of MCIBI-DeepLabV3-R50 vs DeepLabV3-R50
"""

from __future__ import annotations

import sys
import time

import torch


def _time(fn, repeat: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def main(size: int = 256, repeat: int = 2) -> None:
    from ctxseg.config import load_recipe
    from ctxseg.losses import Criterion
    from ctxseg.models.context.memory import update_memory
    from ctxseg.models.segmentor import build_segmentor

    torch.manual_seed(0)
    k, c = 150, 512
    memory = torch.rand(k, 1, c)
    feats = torch.randn(2, c, 64, 64)
    labels = torch.randint(0, k, (2, 512, 512))
    for strategy in ("mean", "cosine_similarity"):
        t = _time(lambda: update_memory(memory.clone(), feats, labels, 0.9, strategy, 255), repeat)
        print(f"update ({strategy}), 2x512x512 labels, 150 classes, 512 ch: {t * 1000:.0f} ms")

    over = ["data.num_classes=150", "model.backbone.pretrained=\"\""]
    recipe = load_recipe("mcibi-deeplabv3-r50-ade20k", over)
    model = build_segmentor(recipe).train()
    x4 = torch.randn(2, 2048, 64, 64, requires_grad=False)
    head, plugin = model.decode_head, model.plugins["memory"]
    tgt = torch.randint(0, k, (2, 512, 512))

    def head_step():
        out = dict(head([x4]))
        out.update(plugin(out, [x4], None))
        (out["logits"].mean() + out["stage1_logits"].mean()).backward()

    print(f"ASPP + MCIBI head fwd+bwd, 2x2048x64x64 (512x512 input): {_time(head_step, repeat) * 1000:.0f} ms")

    for name, mem in (("MCIBI-DeepLabV3-R50", True), ("DeepLabV3-R50 (no memory)", False)):
        r = load_recipe("mcibi-deeplabv3-r50-ade20k", over)
        if not mem:
            r.model.plugins = [p for p in r.model.plugins if p["type"] != "mcibi"]
        m = build_segmentor(r).train()
        crit = Criterion(r)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        img = torch.randn(2, 3, size, size)
        lab = torch.randint(0, k, (2, size, size))

        def step():
            out = m(img, lab)
            loss, _ = crit(m, out, lab, 10**6)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        print(f"train step {name}, batch 2 at {size}x{size}: {_time(step, repeat):.2f} s")
    del tgt


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
