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
must stay <= MEDIAN_SPREAD_RATIO. Cases with stateful plug-ins also store the plug-in state after every
iteration (MCIBI's memory bank: plugin_steps.safetensors, tolerance row `plugin`); cases holding the
official run in float64 too (records' `float64`) are also run by ctxseg's Trainer in float64 and
compared directly (rows `loss64`, `grad_norm64`, `plugin64`), and ctxseg's own float32-to-float64
distance is then added to the spread of the float32 comparisons.
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
from tests.golden_cases import (
    cac_model_recipe_from,
    mmseg_recipe_from,
    openseg_contrast_recipe_from,
    ssseg_mcibi_recipe_from,
)

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


# the MCIBI keys that describe the structure (shapes); the others (update strategy, momentum, loss
# weights, memory-loss start) stay the bundled recipe's, so the case checks the recipe's settings too
_MCIBI_STRUCTURE = ("type", "feats_channels", "transform_channels", "out_channels", "num_feats_per_cls", "dropout")


def _tiny_from_ssseg(cfg: dict) -> dict:
    tiny = ssseg_mcibi_recipe_from(cfg["ssseg_segmentor_cfg"], cfg["case"])
    plugins = tiny["model"]["plugins"]
    tiny["model"]["plugins"] = [{k: v for k, v in p.items() if k in _MCIBI_STRUCTURE} for p in plugins]
    tiny["data"] = {"num_classes": tiny["data"]["num_classes"]}  # the batches' ignore label (255) is the recipe's
    return tiny


def _tiny_from_cac(cfg: dict) -> dict:
    return cac_model_recipe_from(cfg, cfg["case"])


# config.json's ctxseg.model_from -> the tiny ctxseg recipe (dict with model/data) the case's official
# model translates to; one entry per official code base (the translators live in tests/golden_cases.py)
TINY_MODEL = {
    "mmseg_model_cfg": _tiny_from_mmseg,
    "cac_model_cfg": _tiny_from_cac,
    "openseg_hrnet_contrast": openseg_contrast_recipe_from,
    "ssseg_segmentor_cfg": _tiny_from_ssseg,
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


def _ssseg_keymap(recipe, src: dict):
    from ctxseg.convert.ssseg import keymap_for

    return keymap_for(recipe, src)


# config.json's ctxseg.weights -> keymap_for(recipe, official state_dict): the converter of that layout
KEYMAPS = {"mmseg": _mmseg_keymap, "cac": _cac_keymap, "openseg": _openseg_keymap, "ssseg": _ssseg_keymap}


def _keymap(cfg: dict, recipe, src: dict):
    layout = cfg["ctxseg"]["weights"]
    assert layout in KEYMAPS, f"no converter for weights={layout}"
    return KEYMAPS[layout](recipe, src)


def _convert_one(keymap, key: str, value: torch.Tensor, context: dict | None = None) -> tuple[str, torch.Tensor]:
    """The ctxseg name and value of one official tensor (a parameter, or optimizer state shaped like
    it): as apply_keymap does, the fix-ups first (e.g. Swin's patch-merging channel permutation, ssseg's
    ASPP bottleneck input-channel permutation, which the state of that parameter needs too), then the
    first matching rename rule. `context`: the official state dict the tensor belongs to, for fix-ups
    that read other keys (ssseg's ASPP counts its branches); the fix-up then runs on it with `value` in
    place of the key's own tensor."""
    for fix in keymap.fixups:
        out: dict[str, torch.Tensor] = {}
        if key in fix({key: value}, out):
            assert len(out) == 1, f"fix-up of {key} writes {sorted(out)}: not a one-to-one key"
            name, converted = next(iter(out.items()))
            if context is not None:
                full: dict[str, torch.Tensor] = {}
                fix({**context, key: value}, full)
                converted = full[name]
            return name, converted
    for pat, rep in keymap.rules:
        if re.fullmatch(pat, key):
            return re.sub(pat, rep, key), value
    raise AssertionError(f"no rule or fix-up maps {key}")


def _rename(keymap, key: str, like: torch.Tensor | None = None) -> str:
    """The ctxseg name of an official key (`like`: a tensor of its shape, for fix-ups that read it)."""
    return _convert_one(keymap, key, torch.zeros(1) if like is None else like)[0]


def _name_map(keymap, src: dict) -> dict[str, str]:
    """Official key -> ctxseg key for every key of the official state dict `src` the keymap does not ignore."""
    ignore = [re.compile(p) for p in keymap.ignore]
    out = {}
    for k, v in src.items():
        if any(p.fullmatch(k) for p in ignore):
            continue
        try:
            out[k] = _rename(keymap, k, v)
        except AssertionError:  # consumed by a many-to-one fix-up (or derived, e.g. relative_position_index)
            continue
    return out


def _close(ours: float, ref: float, tol: tuple[float, float, float], spread: float) -> bool:
    return abs(ours - ref) <= tol[0] + tol[1] * abs(ref) + tol[2] * spread


def _layout_in_spread(cfg: dict) -> bool:
    runs = cfg["reference"].get("spread_runs")
    return isinstance(runs, list) and "channels_last" in runs


def train_case(folder: Path, runs_dir: Path, extra: tuple[str, ...] = ()):
    """Train ctxseg on one case: (config, folder, trainer after train(), (keymap, official -> ctxseg
    names, official initial state, the float64 trainer or None), official records, (official final
    state, its spread)). `extra`: more recipe overrides (tests/golden_train/mutations.py trains
    deliberately wrong settings with them, to show what the checks catch)."""
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
    # the memory layout: where the case's spread includes the official loop in channels-last layout
    # (reference.spread_runs lists "channels_last": other summation orders at every operation), the
    # Trainer runs the layout this CPU picks (ctxseg.engine.layout, CTXSEG_LAYOUT); a spread of weight
    # perturbations alone covers only the reference's own layout, NCHW (measured: the OCRNet case, 8
    # perturbed runs, one thread, in channels-last fails its loss at iteration 1). config.json
    # ctxseg.layout pins one explicitly
    layout = cfg["ctxseg"].get("layout") or (None if _layout_in_spread(cfg) else "nchw")
    saved = os.environ.get("CTXSEG_LAYOUT")
    if layout:
        os.environ["CTXSEG_LAYOUT"] = layout
    # config.json's ctxseg.threads: the CPU threads of ctxseg's run (default one, as the official loops
    # ran: these tiny steps gain nothing from a second one, and two threads on a busy 2-core machine made
    # them 15-50x slower; the spread of a golden does not depend on the thread count)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg["ctxseg"].get("threads", 1))
    try:
        trainer = Trainer(recipe, runs_dir, progress=False, batches=batches, record_steps=True)
        core = trainer.acc.unwrap_model(trainer.model)
        keymap = _keymap(cfg, recipe, init)
        weights, report = convert_state_dict(init, core, keymap)
        assert report.ok, report.problems()
        core.load_state_dict(weights)
        if cfg["ctxseg"].get(
            "loop_seed"
        ):  # the official loop seeds the global RNG here (ContrastiveSeg's anchor draws)
            torch.manual_seed(cfg["loop_seed"])
        trainer.train()
        records = json.loads((folder / "records.json").read_text())
        trainer64 = None
        if "float64" in records[0]:  # the case also holds the official run in float64: ctxseg's too
            # the input normalised in float64, as the official float64 run (ref_ssseg.normalized64)
            mean = torch.tensor(recipe.data.mean, dtype=torch.float64).view(1, 3, 1, 1)
            std = torch.tensor(recipe.data.std, dtype=torch.float64).view(1, 3, 1, 1)
            batches64 = [
                {"image": (images.flip(1).double() - mean) / std, "label": labels.long()}
                for images, labels in zip(data["image_bgr_uint8"], data["label"])
            ]
            torch.manual_seed(0)
            trainer64 = Trainer(recipe, runs_dir / "float64", progress=False, batches=batches64, record_steps=True)
            core64 = trainer64.acc.unwrap_model(trainer64.model)
            core64.load_state_dict(weights)
            core64.double()  # the same Parameter objects (the optimizer's), now float64
            if cfg["ctxseg"].get("loop_seed"):
                torch.manual_seed(cfg["loop_seed"])
            trainer64.train()
    finally:
        torch.set_num_threads(threads)
        if layout and saved is None:
            os.environ.pop("CTXSEG_LAYOUT", None)
        elif layout:
            os.environ["CTXSEG_LAYOUT"] = saved
    if layout:
        assert trainer.layout.name.lower().replace("-", "_") == layout, trainer.layout
    final = load_file(folder / "final.safetensors")
    final_spread = json.loads((folder / "final_spread.json").read_text())
    names = _name_map(keymap, init)
    return cfg, folder, trainer, (keymap, names, init, trainer64), records, (final, final_spread)


@pytest.fixture(scope="module", params=[f.name for f in FOLDERS])
def run(request, tmp_path_factory):
    """One case, trained (train_case)."""
    return train_case(ROOT / request.param, tmp_path_factory.mktemp("runs"))


def test_cases_are_discovered():
    assert FOLDERS, f"no training golden under {ROOT}"


def _group_pairs(run) -> set[tuple[int, int]]:
    """(official group, ctxseg group) of every trainable parameter (official names from config.json)."""
    cfg, _, trainer, (keymap, _, _, _), _, (final, _) = run
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


def _own_rounding(trainer, trainer64, terms: dict) -> list[dict[str, float]]:
    """Per iteration, how far ctxseg's float32 run is from its own float64 run (each official loss term
    name, "loss", "grad_norm", and each plug-in state key): its own float32 rounding, measured. Empty
    dicts without a float64 run."""
    if trainer64 is None:
        return [{} for _ in trainer.step_records]
    out = []
    for a, b in zip(trainer.step_records, trainer64.step_records, strict=True):
        d = {off: abs(a["terms"][n] - b["terms"][n]) for off, n in terms.items() if n in a["terms"] and n in b["terms"]}
        tot_a = sum(v for k, v in a["terms"].items() if not k.startswith("stat_"))
        tot_b = sum(v for k, v in b["terms"].items() if not k.startswith("stat_"))
        d["loss"], d["grad_norm"] = abs(tot_a - tot_b), abs(a["grad_norm"] - b["grad_norm"])
        for k, v in a["plugin_state"].items():
            d[k] = (v.double() - b["plugin_state"][k].double()).abs().max().item()
        out.append(d)
    return out


def test_losses_and_grad_norm_every_iteration(run):
    cfg, folder, trainer, (_, _, _, trainer64), records, _ = run
    tol = tolerances(folder)
    terms = cfg["ctxseg"]["terms"]
    worst = {"loss": 0.0, "grad_norm": 0.0}
    # the spread's running max (perturbations, once amplified, stay amplified); with a float64 run,
    # ctxseg's own float32 distance to it is added (the official one is in the spread)
    own = _own_rounding(trainer, trainer64, terms)
    env: dict[str, float] = {}
    for ours, ref, mine in zip(trainer.step_records, records, own):
        it = ref["iter"]
        for k, v in [*ref["spread"]["losses"].items(), ("grad_norm", ref["spread"]["grad_norm"])]:
            env[k] = max(env.get(k, 0.0), v + mine.get(k, 0.0))
        for official, name in terms.items():
            # a term the official loop switches on later (MCIBI's memory loss after one epoch) must be
            # absent from ctxseg's step exactly where it is absent from the official one
            if official not in ref["losses"]:
                assert name not in ours["terms"], f"iteration {it}: ctxseg has {name}, the official loop no {official}"
                continue
            assert name in ours["terms"], f"iteration {it}: the official loop has {official}, ctxseg no {name}"
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


def test_plugin_state_every_iteration(run):
    """The plug-ins' state (MCIBI's memory bank) after every iteration, within the `plugin` tolerance;
    a case without stored plug-in state (plugin_steps.safetensors) must have a model without any."""
    cfg, folder, trainer, (_, names, _, trainer64), records, _ = run
    path = folder / "plugin_steps.safetensors"
    if not path.is_file():
        assert not any(r["plugin_state"] for r in trainer.step_records), "ctxseg has plug-in state the case lacks"
        return
    tol = tolerances(folder)["plugin"]
    steps = load_file(path)
    assert set(trainer.step_records[0]["plugin_state"]) == {names[k] for k in steps}
    worst = 0.0
    own = _own_rounding(trainer, trainer64, cfg["ctxseg"]["terms"])
    for key, ref_steps in steps.items():
        env = 0.0
        for ours, ref, r, mine in zip(trainer.step_records, ref_steps, records, own, strict=True):
            env = max(env, r["spread"]["plugin"][key] + mine.get(names[key], 0.0))
            mine = ours["plugin_state"][names[key]].float()
            err = (mine - ref.float()).abs().max().item()
            scale = ref.abs().max().item()
            worst = max(worst, err / max(scale, 1e-30))
            limit = tol[0] + tol[1] * scale + tol[2] * env
            assert err <= limit, f"iteration {r['iter']}: {key} max abs diff {err:.3g} > {limit:.3g} (spread {env:.3g})"
    print(f"{folder.name}: plug-in state max (abs diff / max |ref|) {worst:.3g}")


def final_diffs(run) -> list[dict]:
    """Every final tensor against the official one: rows {kind (param / buffer / plugin / optim), key
    (official), err (max abs diff), scale (max |ref|), spread, limit (the case README's bound)}; counts
    (BN's num_batches_tracked, AdamW's `step`) with limit 0 (they must be equal). With a float64 run,
    ctxseg's own float32-to-float64 distance of each tensor is added to its spread."""
    cfg, folder, trainer, (keymap, _, _, trainer64), _, (final, spread) = run
    tol = tolerances(folder)
    core = trainer.acc.unwrap_model(trainer.model)
    ours = core.state_dict()
    params = dict(core.named_parameters())
    plugin_state = set(trainer.step_records[-1]["plugin_state"])  # e.g. plugins.memory.memory
    state_ref = {k[len("state.") :]: v for k, v in final.items() if k.startswith("state.")}
    own: dict[str, float] = {}  # ctxseg's own float32 distance to its float64 run, per tensor
    if trainer64 is not None:
        core64 = trainer64.acc.unwrap_model(trainer64.model)
        for k, v in core64.state_dict().items():
            if v.is_floating_point():
                own[k] = (ours[k].double().cpu() - v.double().cpu()).abs().max().item()
        params64 = dict(core64.named_parameters())
        for n, p in params.items():
            st, st64 = trainer.optimizer.state.get(p, {}), trainer64.optimizer.state.get(params64[n], {})
            for sk, v in st.items():
                if torch.is_tensor(v) and v.dim() > 0 and sk in st64:
                    own[f"optim:{n}.{sk}"] = (v.double() - st64[sk].double()).abs().max().item()
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
            key, ref = _convert_one(keymap, name, ref, state_ref)
            kind = "param" if key in params else "plugin" if key in plugin_state else "buffer"
            row(kind, name, ours[key], ref, spread.get(k, 0.0) + own.get(key, 0.0))
        elif k.startswith("optim."):
            name, state_key = k[len("optim.") :].rsplit(".", 1)
            # shaped like the parameter: renamed and permuted as it is (Swin's patch merging, ssseg's ASPP)
            key, ref = (
                _convert_one(keymap, name, ref, state_ref)
                if ref.dim()
                else (_rename(keymap, name, final[f"state.{name}"]), ref)
            )
            sp = spread.get(k, 0.0) + own.get(f"optim:{key}.{state_key}", 0.0)
            row("optim", k, trainer.optimizer.state[params[key]][state_key], ref, sp)
    return rows


def test_final_parameters_buffers_and_optimizer_state(run):
    """Every final parameter, buffer, plug-in state and optimizer state tensor within the case README's
    bound; the median over each kind's tensors (parameters, buffers, optimizer state) of
    |ours - ref| / spread <= MEDIAN_SPREAD_RATIO; counts equal."""
    cfg, folder, trainer, (keymap, _, _, _), _, (final, _) = run
    core = trainer.acc.unwrap_model(trainer.model)
    state_ref = {k[len("state.") :]: v for k, v in final.items() if k.startswith("state.")}
    converted, report = convert_state_dict(state_ref, core, keymap)  # the whole state converts, strictly
    assert report.ok, report.problems()
    plugin_state = set(trainer.step_records[-1]["plugin_state"])
    assert plugin_state <= set(converted), f"the case stores no final {sorted(plugin_state - set(converted))}"
    rows = final_diffs(run)
    assert any(r["kind"] == "optim" for r in rows), "the case stores no optimizer state"
    worst: dict[str, float] = {}
    ratios: dict[str, list[float]] = {"param": [], "buffer": [], "optim": []}
    for r in rows:
        what = f"{r['key']}: max abs diff {r['err']:.3g} > {r['limit']:.3g} (max |ref| {r['scale']:.3g})"
        assert r["err"] <= r["limit"], what
        if r["limit"] > 0:
            worst[r["kind"]] = max(worst.get(r["kind"], 0.0), r["err"] / max(r["scale"], 1e-30))
            if r["kind"] in ratios:
                ratios[r["kind"]].append(r["err"] / max(r["spread"], 1e-30))
    for kind, values in ratios.items():
        median = torch.tensor(values).median().item()
        assert median <= MEDIAN_SPREAD_RATIO, f"{kind}: median |ours - ref| / spread {median:.2f}"
    print(f"{folder.name}: max (abs diff / max |ref|) " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))


def test_float64_trajectory(run):
    """Where the case holds the official run in float64 too (records' `float64`), ctxseg's Trainer in
    float64 must follow it at every iteration within the case's `loss64` / `grad_norm64` / `plugin64`
    tolerances: there float32's rounding amplification (low-variance BatchNorms, ReLU flips) is gone
    and the two loops are compared directly. A case without it must not have a float64 run."""
    cfg, folder, trainer, (_, names, _, trainer64), records, _ = run
    if "float64" not in records[0]:
        assert trainer64 is None
        return
    tol = tolerances(folder)
    terms = cfg["ctxseg"]["terms"]
    steps = load_file(folder / "plugin_steps_float64.safetensors")
    worst = {"loss": 0.0, "grad_norm": 0.0, "plugin": 0.0}
    for ours, r in zip(trainer64.step_records, records, strict=True):
        ref, it = r["float64"], r["iter"]
        for g, (a, b) in enumerate(zip(ours["lr"], ref["lr"])):
            assert abs(a - b) <= LR_RTOL * abs(b), f"iteration {it}: lr {a!r} vs official {b!r} (group {g})"
        for official, name in terms.items():
            if official not in ref["losses"]:
                assert name not in ours["terms"], f"iteration {it}: ctxseg has {name}, the official loop no {official}"
                continue
            assert name in ours["terms"], f"iteration {it}: the official loop has {official}, ctxseg no {name}"
            a, b = ours["terms"][name], ref["losses"][official]
            worst["loss"] = max(worst["loss"], abs(a - b) / abs(b))
            assert _close(a, b, tol["loss64"], 0.0), f"iteration {it}: float64 {name} {a} vs official {b}"
        total = sum(v for k, v in ours["terms"].items() if not k.startswith("stat_"))
        assert _close(total, ref["losses"]["loss"], tol["loss64"], 0.0), f"iteration {it}: float64 loss {total}"
        a, b = ours["grad_norm"], ref["grad_norm"]
        worst["grad_norm"] = max(worst["grad_norm"], abs(a - b) / abs(b))
        assert _close(a, b, tol["grad_norm64"], 0.0), f"iteration {it}: float64 grad norm {a} vs official {b}"
        for key, ref_steps in steps.items():
            mine, want = ours["plugin_state"][names[key]].double(), ref_steps[it]
            err, scale = (mine - want).abs().max().item(), want.abs().max().item()
            worst["plugin"] = max(worst["plugin"], err / max(scale, 1e-30))
            atol, rtol, _ = tol["plugin64"]
            assert err <= atol + rtol * scale, f"iteration {it}: float64 {key} max abs diff {err:.3g}"
    print(f"{folder.name}: float64 max rel diff " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))


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
