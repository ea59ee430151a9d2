"""Development benchmarks against the official implementations (not part of the installed package).

Run from the repository root: `python -m benchmarks.side_by_side`, `python -m benchmarks.bench_ocr`,
... (docs/benchmarks.md). `ctxseg bench` is the user's benchmark; these scripts reproduce the
official side's inputs (benchmarks.ref_inputs) and time ctxseg's side of each case.
"""
