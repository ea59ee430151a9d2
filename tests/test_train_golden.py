"""Step-by-step training goldens (issue 22): ctxseg's own Trainer against the official training loops.

Data-driven: every folder with a config.json under tests/golden_train/cases/ (or $CTXSEG_TRAIN_GOLDEN)
is a case, written by tests/golden_train/generate.py. For each case the initial weights are converted
with ctxseg's converter, the bundled recipe the case names is resolved with the case's tiny model and
overrides, and `Trainer.train()` (its optimizer, param groups, lr schedule, loss and step code) runs on
the case's fixed batches. Compared: the lr of every parameter at every iteration (relative 1e-12), every
loss term and the global gradient norm per iteration, and at the end every parameter, buffer and the
optimizer state, within the tolerances of the case's README.md: |ours - ref| <= atol + rtol * |ref| +
spread_factor * spread, where spread is how far the official loop itself moves under float32-rounding-sized
perturbations of its initial weights (stored with the case; per iteration its running max); and for the
final tensors of each kind (parameters, buffers, optimizer state) the median of |ours - ref| / spread
must stay <= MEDIAN_SPREAD_RATIO.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ctxseg.config import apply_overrides, deep_merge, find_recipe, load_raw, validate_recipe
from ctxseg.convert.base import convert_state_dict
from ctxseg.data.transforms import normalize
from tests.golden_cases import cac_model_recipe_from, mmseg_recipe_from, openseg_contrast_recipe_from

ROOT = Path(os.environ.get("CTXSEG_TRAIN_GOLDEN", Path(__file__).parent / "golden_train" / "cases"))
FOLDERS = sorted(p.parent for p in ROOT.glob("*/config.json"))
LR_RTOL = 1e-12
# the final tensors of a kind, taken together: the median of |ours - ref| / spread. The spread is a
# max over two perturbed official runs, so single tensors may sit at several times it (the per-tensor
# bound of the case README); a systematic difference moves the median
MEDIAN_SPREAD_RATIO = 3.0
# settings of the test run that do not change what is computed
RUN_OVERRIDES = ["train.tensorboard=false", "train.check_labels=false", "train.mixed_precision='no'"]


def tolerances(folder: Path) -> dict[str, tuple[float, float, float]]:
    """`quantity -> (atol, rtol, spread)` from the README rows "| `quantity` | ... | atol=A, rtol=R, spread=S |":
    |ours - ref| <= A + R * |ref| + S * (the reference's own spread stored with the case)."""
    rows = re.findall(
        r"^\|\s*`([\w.]+)`\s*\|.*?\|\s*atol=([0-9.eE+-]+),\s*rtol=([0-9.eE+-]+),\s*spread=([0-9.eE+-]+)\s*\|",
        (folder / "README.md").read_text(),
        re.M,
    )
    tol = {name: (float(a), float(r), float(sp)) for name, a, r, sp in rows}
    missing = {"loss", "grad_norm", "param", "buffer", "optim"} - set(tol)
    assert not missing, f"{folder}/README.md states no tolerance for {sorted(missing)}"
    return tol


def _tiny_from_mmseg(cfg: dict) -> dict:
    return mmseg_recipe_from(cfg, cfg["case"])


def _tiny_from_cac(cfg: dict) -> dict:
    return cac_model_recipe_from(cfg, cfg["case"])


# config.json's ctxseg.model_from -> the tiny ctxseg recipe (dict with model/data) the case's official
# model translates to; one entry per official code base (the translators live in tests/golden_cases.py)
TINY_MODEL = {
    "mmseg_model_cfg": _tiny_from_mmseg,
    "cac_model_cfg": _tiny_from_cac,
    "openseg_hrnet_contrast": openseg_contrast_recipe_from,
}


def _recipe(cfg: dict, extra: tuple[str, ...] = ()):
    c = cfg["ctxseg"]
    raw = load_raw(find_recipe(c["recipe"]))
    assert c["model_from"] in TINY_MODEL, f"no translation for model_from={c['model_from']}"
    tiny = TINY_MODEL[c["model_from"]](cfg)
    raw["model"] = deep_merge(raw["model"], {k: v for k, v in tiny["model"].items() if k != "backbone"})
    raw["model"]["backbone"] = tiny["model"]["backbone"]  # the tiny stages replace the preset (no pretrained)
    raw["data"] = deep_merge(raw["data"], tiny["data"])
    raw = apply_overrides(raw, [*c["overrides"], *RUN_OVERRIDES, *extra])
    return validate_recipe(raw)


def _mmseg_keymap(recipe, src: dict):
    from ctxseg.convert.mmseg import keymap_for

    return keymap_for(recipe, src)


def _cac_keymap(recipe, src: dict):
    from ctxseg.convert.cac import keymap_for

    return keymap_for(recipe, src)


def _openseg_keymap(recipe, src: dict):
    from ctxseg.convert.openseg import keymap_for

    return keymap_for(recipe, src)


# config.json's ctxseg.weights -> keymap_for(recipe, official state_dict): the converter of that layout
KEYMAPS = {"mmseg": _mmseg_keymap, "cac": _cac_keymap, "openseg": _openseg_keymap}


def _keymap(cfg: dict, recipe, src: dict):
    layout = cfg["ctxseg"]["weights"]
    assert layout in KEYMAPS, f"no converter for weights={layout}"
    return KEYMAPS[layout](recipe, src)


def _convert_one(keymap, key: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    """The ctxseg name and value of one official tensor (a parameter, or optimizer state shaped like
    it): as apply_keymap does, the fix-ups first (e.g. Swin's patch-merging channel permutation, which
    the state of that parameter needs too), then the first matching rename rule."""
    for fix in keymap.fixups:
        out: dict[str, torch.Tensor] = {}
        if key in fix({key: value}, out):
            assert len(out) == 1, f"fix-up of {key} writes {sorted(out)}: not a one-to-one key"
            return next(iter(out.items()))
    for pat, rep in keymap.rules:
        if re.fullmatch(pat, key):
            return re.sub(pat, rep, key), value
    raise AssertionError(f"no rule or fix-up maps {key}")


def _rename(keymap, key: str, like: torch.Tensor | None = None) -> str:
    """The ctxseg name of an official key (`like`: a tensor of its shape, for fix-ups that read it)."""
    return _convert_one(keymap, key, torch.zeros(1) if like is None else like)[0]


def _close(ours: float, ref: float, tol: tuple[float, float, float], spread: float) -> bool:
    return abs(ours - ref) <= tol[0] + tol[1] * abs(ref) + tol[2] * spread


def train_case(folder: Path, runs_dir: Path, extra: tuple[str, ...] = ()):
    """Train ctxseg on one case: (config, folder, trainer after train(), keymap, official records,
    (official final state, its spread)). `extra`: more recipe overrides (tests/golden_train/mutations.py
    trains deliberately wrong settings with them, to show what the checks catch)."""
    from ctxseg.engine.trainer import Trainer

    cfg = json.loads((folder / "config.json").read_text())
    recipe = _recipe(cfg, extra)
    init = load_file(folder / "init.safetensors")
    data = load_file(folder / "batches.safetensors")
    batches = []
    for images, labels in zip(data["image_bgr_uint8"], data["label"]):
        x = [
            torch.from_numpy(normalize(im.permute(1, 2, 0).numpy(), recipe.data.mean, recipe.data.std)) for im in images
        ]
        batches.append({"image": torch.stack(x), "label": labels.long()})
    torch.manual_seed(0)
    trainer = Trainer(recipe, runs_dir, progress=False, batches=batches, record_steps=True)
    core = trainer.acc.unwrap_model(trainer.model)
    keymap = _keymap(cfg, recipe, init)
    weights, report = convert_state_dict(init, core, keymap)
    assert report.ok, report.problems()
    core.load_state_dict(weights)
    if cfg["ctxseg"].get("loop_seed"):  # the official loop seeds the global RNG here (ContrastiveSeg's anchor draws)
        torch.manual_seed(cfg["loop_seed"])
    # config.json's ctxseg.threads: the CPU threads of ctxseg's run (default: the test session's). The CAC
    # and ContrastiveSeg cases run on one thread, as their goldens were made: their tiny steps gain nothing
    # from a second one, and two threads on a busy 2-core machine made them 15-50x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg["ctxseg"].get("threads", threads))
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    records = json.loads((folder / "records.json").read_text())
    final = load_file(folder / "final.safetensors")
    final_spread = json.loads((folder / "final_spread.json").read_text())
    return cfg, folder, trainer, keymap, records, (final, final_spread)


@pytest.fixture(scope="module", params=[f.name for f in FOLDERS])
def run(request, tmp_path_factory):
    """One case, trained (train_case)."""
    return train_case(ROOT / request.param, tmp_path_factory.mktemp("runs"))


def test_cases_are_discovered():
    assert FOLDERS, f"no training golden under {ROOT}"


def _group_pairs(run) -> set[tuple[int, int]]:
    """(official group, ctxseg group) of every trainable parameter (official names from config.json)."""
    cfg, _, trainer, keymap, _, (final, _) = run
    core = trainer.acc.unwrap_model(trainer.model)
    ids = {id(p): i for i, g in enumerate(trainer.optimizer.param_groups) for p in g["params"]}
    ours_group = {name: ids[id(p)] for name, p in core.named_parameters()}
    return {(g, ours_group[_rename(keymap, name, final[f"state.{name}"])]) for name, g in cfg["param_groups"].items()}


def test_lr_and_weight_decay_of_every_parameter_at_every_iteration(run):
    """Each parameter's lr (relative 1e-12) and weight decay (exact) at every iteration, through the
    group it is in on each side; and, where the case stores them (records[0]["optimizer"]), the other
    settings of its official group that change the update (AdamW's betas and eps, ...)."""
    cfg, folder, trainer, _, records, _ = run
    pairs = _group_pairs(run)
    assert len(trainer.step_records) == len(records) == cfg["iters"]
    worst = 0.0
    for ours, ref in zip(trainer.step_records, records):
        for g_ref, g_ours in pairs:
            a, b = ours["lr"][g_ours], ref["lr"][g_ref]
            err = abs(a - b) / max(abs(b), 1e-300)
            worst = max(worst, err)
            assert err <= LR_RTOL, f"iteration {ref['iter']}: lr {a!r} vs official {b!r} (group {g_ref})"
            if "weight_decay" in ref:  # cases written before weight decay was recorded have none
                a, b = ours["weight_decay"][g_ours], ref["weight_decay"][g_ref]
                assert a == b, f"iteration {ref['iter']}: weight decay {a!r} vs official {b!r} (group {g_ref})"
    for g_ref, g_ours in pairs:
        for key, official in records[0].get("optimizer", [{}] * len(records[0]["lr"]))[g_ref].items():
            mine = trainer.optimizer.param_groups[g_ours].get(key)
            mine = list(mine) if isinstance(mine, tuple) else mine
            assert mine == official, f"optimizer {key}: {mine!r} vs official {official!r} (group {g_ref})"
    print(f"{folder.name}: lr max rel diff {worst:.3g}; {len(pairs)} (official, ctxseg) group pairs")


def test_losses_and_grad_norm_every_iteration(run):
    cfg, folder, trainer, _, records, _ = run
    tol = tolerances(folder)
    terms = cfg["ctxseg"]["terms"]
    worst = {"loss": 0.0, "grad_norm": 0.0}
    env: dict[str, float] = {}  # the spread's running max: perturbations, once amplified, stay amplified
    for ours, ref in zip(trainer.step_records, records):
        it = ref["iter"]
        for k, v in [*ref["spread"]["losses"].items(), ("grad_norm", ref["spread"]["grad_norm"])]:
            env[k] = max(env.get(k, 0.0), v)
        for official, name in terms.items():
            a, b = ours["terms"][name], ref["losses"][official]
            worst["loss"] = max(worst["loss"], abs(a - b) / max(abs(b), 1e-30))
            sp = env[official]
            assert _close(a, b, tol["loss"], sp), f"iteration {it}: {name} {a} vs official {official} {b} (spread {sp})"
        total = sum(v for k, v in ours["terms"].items() if not k.startswith("stat_"))
        sp = env["loss"]
        assert _close(total, ref["losses"]["loss"], tol["loss"], sp), f"iteration {it}: loss {total} vs {ref['losses']}"
        a, b, sp = ours["grad_norm"], ref["grad_norm"], env["grad_norm"]
        worst["grad_norm"] = max(worst["grad_norm"], abs(a - b) / abs(b))
        assert _close(a, b, tol["grad_norm"], sp), f"iteration {it}: grad norm {a} vs official {b} (spread {sp})"
    print(f"{folder.name}: max rel diff " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))


def final_diffs(run) -> list[dict]:
    """Every final tensor against the official one: rows {kind (param / buffer / optim), key (official),
    err (max abs diff), scale (max |ref|), spread, limit (the case README's bound)}; counts (BN's
    num_batches_tracked, AdamW's `step`) with limit 0 (they must be equal)."""
    cfg, folder, trainer, keymap, _, (final, spread) = run
    tol = tolerances(folder)
    core = trainer.acc.unwrap_model(trainer.model)
    ours = core.state_dict()
    params = dict(core.named_parameters())
    rows = []

    def row(kind, key, mine, ref, sp):
        mine, ref = torch.as_tensor(mine).cpu(), torch.as_tensor(ref)
        if not ref.is_floating_point() or ref.dim() == 0:  # num_batches_tracked, AdamW's step: exact
            err = float((mine.double() - ref.double()).abs().max())
            rows.append(
                {"kind": kind, "key": key, "err": err, "scale": float(ref.abs().max()), "spread": 0.0, "limit": 0.0}
            )
            return
        atol, rtol, s = tol[kind]
        err = (mine.float() - ref.float()).abs().max().item()
        scale = ref.abs().max().item()
        rows.append(
            {"kind": kind, "key": key, "err": err, "scale": scale, "spread": sp, "limit": atol + rtol * scale + s * sp}
        )

    for k, ref in final.items():
        if k.startswith("state."):
            name = k[len("state.") :]
            if name.endswith("relative_position_index"):  # derived by ctxseg (the converter checks it)
                continue
            key, ref = _convert_one(keymap, name, ref)
            row("param" if key in params else "buffer", name, ours[key], ref, spread.get(k, 0.0))
        elif k.startswith("optim."):
            name, state_key = k[len("optim.") :].rsplit(".", 1)
            # shaped like the parameter: renamed and permuted as it is (Swin's patch merging)
            key, ref = (
                _convert_one(keymap, name, ref) if ref.dim() else (_rename(keymap, name, final[f"state.{name}"]), ref)
            )
            row("optim", k, trainer.optimizer.state[params[key]][state_key], ref, spread.get(k, 0.0))
    return rows


def test_final_parameters_buffers_and_optimizer_state(run):
    """Every final parameter, buffer and optimizer state tensor within the case README's bound; the
    median over each kind's tensors of |ours - ref| / spread <= MEDIAN_SPREAD_RATIO; counts equal."""
    cfg, folder, trainer, keymap, _, (final, _) = run
    core = trainer.acc.unwrap_model(trainer.model)
    state_ref = {k[len("state.") :]: v for k, v in final.items() if k.startswith("state.")}
    _, report = convert_state_dict(state_ref, core, keymap)  # the whole state converts, strictly
    assert report.ok, report.problems()
    rows = final_diffs(run)
    assert any(r["kind"] == "optim" for r in rows), "the case stores no optimizer state"
    worst: dict[str, float] = {}
    ratios: dict[str, list[float]] = {"param": [], "buffer": [], "optim": []}
    for r in rows:
        what = f"{r['key']}: max abs diff {r['err']:.3g} > {r['limit']:.3g} (max |ref| {r['scale']:.3g})"
        assert r["err"] <= r["limit"], what
        if r["limit"] > 0:
            worst[r["kind"]] = max(worst.get(r["kind"], 0.0), r["err"] / max(r["scale"], 1e-30))
            ratios[r["kind"]].append(r["err"] / max(r["spread"], 1e-30))
    for kind, values in ratios.items():
        median = torch.tensor(values).median().item()
        assert median <= MEDIAN_SPREAD_RATIO, f"{kind}: median |ours - ref| / spread {median:.2f}"
    print(f"{folder.name}: max (abs diff / max |ref|) " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))


def test_convert_one_renames_and_permutes_state_like_its_parameter():
    """A Swin patch-merging weight goes through the converter's fix-up (channel permutation when the
    recipe's merge order differs from the source's), so its AdamW moments must too; other keys through
    the rename rules, values unchanged."""
    from ctxseg.convert.mmseg_swin import swin_keymap, unfold_to_orig

    w = torch.randn(8, 16)
    merge, fc2 = "backbone.stages.0.downsample.reduction.weight", "backbone.stages.0.blocks.0.ffn.layers.1.weight"
    keymap = swin_keymap({merge: w, fc2: w}, "timm")  # mmseg source (unfold order) -> timm order
    key, value = _convert_one(keymap, merge, w)
    assert key == merge and torch.equal(value, unfold_to_orig(w)) and not torch.equal(value, w)
    assert _convert_one(keymap, fc2, w) == ("backbone.stages.0.blocks.0.mlp.fc2.weight", w)
    assert _rename(swin_keymap({merge: w, fc2: w}), merge, w) == merge  # same order: unchanged
    with pytest.raises(AssertionError, match="no rule or fix-up"):
        _convert_one(keymap, "backbone.unknown.weight", w)
