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


def _recipe(cfg: dict):
    c = cfg["ctxseg"]
    raw = load_raw(find_recipe(c["recipe"]))
    assert c["model_from"] in TINY_MODEL, f"no translation for model_from={c['model_from']}"
    tiny = TINY_MODEL[c["model_from"]](cfg)
    raw["model"] = deep_merge(raw["model"], {k: v for k, v in tiny["model"].items() if k != "backbone"})
    raw["model"]["backbone"] = tiny["model"]["backbone"]  # the tiny stages replace the preset (no pretrained)
    raw["data"] = deep_merge(raw["data"], tiny["data"])
    raw = apply_overrides(raw, [*c["overrides"], *RUN_OVERRIDES])
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


def _rename(keymap, key: str) -> str:
    """The ctxseg name of an official key (the keymap's first matching rule)."""
    for pat, rep in keymap.rules:
        if re.fullmatch(pat, key):
            return re.sub(pat, rep, key)
    raise AssertionError(f"no rule maps {key}")


def _close(ours: float, ref: float, tol: tuple[float, float, float], spread: float) -> bool:
    return abs(ours - ref) <= tol[0] + tol[1] * abs(ref) + tol[2] * spread


@pytest.fixture(scope="module", params=[f.name for f in FOLDERS])
def run(request, tmp_path_factory):
    """One case: (config, recipe, keymap, trainer after train(), official records, official final state)."""
    from ctxseg.engine.trainer import Trainer

    folder = ROOT / request.param
    cfg = json.loads((folder / "config.json").read_text())
    recipe = _recipe(cfg)
    init = load_file(folder / "init.safetensors")
    data = load_file(folder / "batches.safetensors")
    batches = []
    for images, labels in zip(data["image_bgr_uint8"], data["label"]):
        x = [
            torch.from_numpy(normalize(im.permute(1, 2, 0).numpy(), recipe.data.mean, recipe.data.std)) for im in images
        ]
        batches.append({"image": torch.stack(x), "label": labels.long()})
    torch.manual_seed(0)
    trainer = Trainer(recipe, tmp_path_factory.mktemp("runs"), progress=False, batches=batches, record_steps=True)
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


def test_cases_are_discovered():
    assert FOLDERS, f"no training golden under {ROOT}"


def test_lr_of_every_parameter_at_every_iteration(run):
    cfg, folder, trainer, keymap, records, _ = run
    core = trainer.acc.unwrap_model(trainer.model)
    ours_group = {}
    ids = {id(p): i for i, g in enumerate(trainer.optimizer.param_groups) for p in g["params"]}
    for name, p in core.named_parameters():
        ours_group[name] = ids[id(p)]
    pairs = {(g, ours_group[_rename(keymap, name)]) for name, g in cfg["param_groups"].items()}
    assert len(trainer.step_records) == len(records) == cfg["iters"]
    worst = 0.0
    for ours, ref in zip(trainer.step_records, records):
        for g_ref, g_ours in pairs:
            a, b = ours["lr"][g_ours], ref["lr"][g_ref]
            err = abs(a - b) / max(abs(b), 1e-300)
            worst = max(worst, err)
            assert err <= LR_RTOL, f"iteration {ref['iter']}: lr {a!r} vs official {b!r} (group {g_ref})"
    print(f"{folder.name}: lr max rel diff {worst:.3g}")


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


def test_final_parameters_buffers_and_optimizer_state(run):
    cfg, folder, trainer, keymap, _, (final, spread) = run
    tol = tolerances(folder)
    core = trainer.acc.unwrap_model(trainer.model)
    ours = core.state_dict()
    params = dict(core.named_parameters())
    state_ref = {k[len("state.") :]: v for k, v in final.items() if k.startswith("state.")}
    converted, report = convert_state_dict(state_ref, core, keymap)
    assert report.ok, report.problems()
    spread_of = {_rename(keymap, k[len("state.") :]): v for k, v in spread.items() if k.startswith("state.")}
    worst: dict[str, float] = {}
    ratios: dict[str, list[float]] = {"param": [], "buffer": [], "optim": []}
    for key, ref in converted.items():
        mine = ours[key]
        if not ref.is_floating_point():  # num_batches_tracked
            assert torch.equal(mine.cpu(), ref), f"{key}: {mine} vs {ref}"
            continue
        kind = "param" if key in params else "buffer"
        atol, rtol, s = tol[kind]
        err = (mine.float().cpu() - ref).abs().max().item()
        scale = ref.abs().max().item()
        worst[kind] = max(worst.get(kind, 0.0), err / max(scale, 1e-30))
        limit = atol + rtol * scale + s * spread_of[key]
        ratios[kind].append(err / max(spread_of[key], 1e-30))
        assert err <= limit, f"{key}: max abs diff {err:.3g} > {limit:.3g} (max |ref| {scale:.3g})"
    optim_ref = [k for k in final if k.startswith("optim.")]
    assert optim_ref, "the case stores no optimizer state"
    for k in optim_ref:
        name, state_key = k[len("optim.") :].rsplit(".", 1)
        ref = final[k]
        mine = trainer.optimizer.state[params[_rename(keymap, name)]][state_key]
        mine = torch.as_tensor(mine).float().cpu()
        atol, rtol, s = tol["optim"]
        err = (mine - ref.float()).abs().max().item()
        scale = ref.abs().max().item()
        worst["optim"] = max(worst.get("optim", 0.0), err / max(scale, 1e-30))
        limit = atol + rtol * scale + s * spread[k]
        ratios["optim"].append(err / max(spread[k], 1e-30))
        assert err <= limit, f"{k}: max abs diff {err:.3g} > {limit:.3g} (max |ref| {scale:.3g})"
    for kind, values in ratios.items():
        median = torch.tensor(values).median().item()
        assert median <= MEDIAN_SPREAD_RATIO, f"{kind}: median |ours - ref| / spread {median:.2f}"
    print(f"{folder.name}: max (abs diff / max |ref|) " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))
