"""OCR head micro-benchmark: forward and forward+backward of the full OCRNet-HRNet head
(region FCN + gather + object attention + classifier) on random HRNet branch outputs.

    python -m ctxseg.tools.bench_ocr --width 48 --height 64 --feat-width 128 --batch 2

Reports medians (ms) and the share of the gather + attention matmuls. Used for
docs/benchmarks/ocrnet.md; not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ctxseg.models.heads.ocr import OCRHead


def _median_ms(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=48, help="HRNet width (18 or 48)")
    ap.add_argument("--height", type=int, default=64, help="branch-0 feature height (input/4)")
    ap.add_argument("--feat-width", type=int, default=128, help="branch-0 feature width (input/4)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    chans = [args.width * 2**i for i in range(4)]
    head = OCRHead(in_channels=chans, num_classes=args.classes, channels=512, ocr_channels=256, in_index=[0, 1, 2, 3], input_transform="resize_concat",
                   dropout_ratio=-1, region_head=dict(in_index=[0, 1, 2, 3], input_transform="resize_concat", channels=sum(chans),
                                                      kernel_size=1, num_convs=1, concat_input=False, dropout_ratio=-1))
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(args.batch, c, args.height // 2**i, args.feat_width // 2**i, generator=g) for i, c in enumerate(chans)]

    head.eval()

    @torch.no_grad()
    def fwd():
        head(feats)

    head.train()
    inputs = [f.clone().requires_grad_(True) for f in feats]

    def fwd_bwd():
        out = head(inputs)
        (out["logits"].sum() + 0.4 * out["aux_logits"].sum()).backward()

    # the context part alone: gather + object attention on the head's pixel representation
    pixels = torch.randn(args.batch, 512, args.height, args.feat_width, generator=g)
    regions = torch.randn(args.batch, args.classes, args.height, args.feat_width, generator=g)
    head.eval()

    @torch.no_grad()
    def context():
        head.object_context_block(pixels, head.spatial_gather_module(pixels, regions))

    res = {
        "config": vars(args),
        "threads": torch.get_num_threads(),
        "forward_ms": _median_ms(fwd, args.repeats, args.warmup),
        "context_forward_ms": _median_ms(context, args.repeats, args.warmup),
    }
    head.train()
    res["forward_backward_ms"] = _median_ms(fwd_bwd, args.repeats, args.warmup)
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
