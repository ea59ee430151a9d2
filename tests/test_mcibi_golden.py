"""MCIBI against sssegmentation's golden data: CLI conversion, eval forward, memory update for both
strategies, memory loss, one training step (losses, updated memory, gradients).

Driven by the data: every `ssseg-mcibi-*` folder with a config.json is a case; its model is
built from that config.json (tests/golden_cases.py) and its tolerances are its README's table.
Every stored tensor is compared: the test that reads a file fails naming any stored tensor it
neither compares nor finds among the inputs (tests/golden_cases.py GOLDEN_INPUTS)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctxseg.config import to_toml, validate_recipe
from ctxseg.engine.checkpoint import load_model
from ctxseg.losses import Criterion
from ctxseg.models.context.memory import update_memory
from tests.conftest import golden, run_cli
from tests.golden_cases import Stored, case_folders, readme_file_tolerances, ssseg_mcibi_recipe

FOLDERS = case_folders("ssseg-mcibi-")


def tolerances(folder: str) -> dict[str, tuple[float, float]]:
    """io / update / train_step -> (atol, rtol), from the case README's table."""
    return {name.removesuffix(".safetensors"): tol for name, tol in readme_file_tolerances(golden(folder)).items()}


def recipe_of(folder: str):
    return validate_recipe(ssseg_mcibi_recipe(folder))


def test_cases_are_discovered():
    assert {"ssseg-mcibi-deeplabv3", "ssseg-mcibi-multifeat"} <= set(FOLDERS)


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_stored_file_is_read(folder):
    """io / update / train_step are the files the tests below read; another one fails here by name,
    as does a file without a tolerance in the README."""
    files = {p.stem for p in golden(folder).glob("*.safetensors")}
    assert files == {"io", "update", "train_step"}, f"{folder}: {sorted(files)}"
    assert files <= set(tolerances(folder)), (
        f"{folder}/README.md: no tolerance for {sorted(files - set(tolerances(folder)))}"
    )


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("mcibi")
    paths = {}
    for folder in FOLDERS:
        dst = out / f"{folder}.safetensors"
        recipe = out / f"{folder}.toml"
        recipe.write_text(to_toml(ssseg_mcibi_recipe(folder)) + "\n")
        proc = run_cli(
            "convert", "ssseg", str(golden(folder, "checkpoint.pth")), "--recipe", str(recipe), "-o", str(dst), cwd=out
        )
        assert "wrote" in proc.stdout
        paths[folder] = str(dst)
    return paths


def close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


@pytest.mark.parametrize("folder", FOLDERS)
def test_eval_forward_matches_golden(converted, folder):
    atol, rtol = tolerances(folder)["io"]
    model, _, _ = load_model(converted[folder])
    io = Stored("ssseg-mcibi", folder, "io.safetensors")
    plugin = model.plugins["memory"]
    caps: dict[str, torch.Tensor] = {}

    def keep(name):
        return lambda m, i, o: caps.__setitem__(name, o)

    for s, att in enumerate(plugin.self_attentions):
        att.register_forward_hook(keep(f"selected.{s}"))
        att.register_forward_pre_hook(lambda m, i, s=s: caps.__setitem__(f"aggregated.{s}", i[1]))
    if plugin.num_feats_per_cls > 1:
        plugin.fuse_memory_conv.register_forward_hook(keep("fused"))
    plugin.memory_bottleneck.register_forward_hook(keep("before_ms"))
    plugin.self_attention_ms.register_forward_hook(keep("ms_attended"))
    with torch.no_grad():
        feats = model.backbone(io["input"])
        out = model(io["input"])
    for i in range(4):
        close(feats[i], io.ref(f"backbone_out.{i}"), atol, rtol)
    close(plugin.memory, io.ref("memory"), 0.0, 0.0)
    close(out["memory_input"], io.ref("memory_input"), atol, rtol)
    close(out["stage1_logits"], io.ref("preds_stage1"), atol, rtol)
    single = plugin.num_feats_per_cls == 1
    for s in range(plugin.num_feats_per_cls):
        suffix = "" if single else f".{s}"
        close(caps[f"aggregated.{s}"], io.ref(f"memory_module.aggregated_memory{suffix}"), atol, rtol)
        close(caps[f"selected.{s}"], io.ref(f"memory_module.selected_memory{suffix}"), atol, rtol)
    if not single:
        close(caps["fused"], io.ref("memory_module.fused_memory"), atol, rtol)
    close(caps["before_ms"], io.ref("memory_module.memory_output_before_ms"), atol, rtol)
    close(caps["ms_attended"], io.ref("memory_module.feats_ms_attended"), atol, rtol)
    close(out["memory_output"], io.ref("memory_output"), atol, rtol)
    close(out["logits"], io.ref("preds_stage2"), atol, rtol)
    # the decode head's features are ssseg's ASPP output (context within the image)
    close(model.decode_head.features(feats), io.ref("feats_ms"), atol, rtol)
    io.assert_all_compared()


@pytest.mark.parametrize("folder", FOLDERS)
def test_memory_update_matches_golden(converted, folder):
    atol, rtol = tolerances(folder)["update"]
    UPDATE_TOL = dict(atol=atol, rtol=rtol)
    up = Stored("ssseg-mcibi", folder, "update.safetensors")
    model, _, _ = load_model(converted[folder])
    plugin = model.plugins["memory"]
    plugin.before_train_step(0, float(up["learning_rate"]))
    assert plugin.momentum() == pytest.approx(float(up.ref("momentum")), rel=1e-6)
    strategies = [k.split(".", 1)[1] for k in up.keys() if k.startswith("memory_after.")]
    assert "cosine_similarity" in strategies
    for strategy in strategies:
        plugin.strategy = strategy
        plugin.memory.copy_(up["memory_before"])
        plugin.update(up["features"], up["labels"])  # image-resolution features, as ssseg passes them
        close(plugin.memory, up.ref(f"memory_after.{strategy}"), **UPDATE_TOL)
        # feature resolution features are upsampled band by band: same result (forward tolerance)
        mem = up["memory_before"].clone()
        update_memory(mem, up["features"], up["labels"], plugin.momentum(), strategy, -100, max_elements=3000)
        close(mem, up.ref(f"memory_after.{strategy}"), **UPDATE_TOL)
    up.assert_all_compared(lambda k: not k.startswith("memory_loss."))  # memory_loss.*: the next test's


@pytest.mark.parametrize("folder", FOLDERS)
def test_memory_loss_matches_golden(converted, folder):
    atol, rtol = tolerances(folder)["update"]
    UPDATE_TOL = dict(atol=atol, rtol=rtol)
    up = Stored("ssseg-mcibi", folder, "update.safetensors")
    model, _, _ = load_model(converted[folder])
    plugin = model.plugins["memory"]
    plugin.memory.copy_(up["memory_loss.memory"])
    k, s, c = plugin.memory.shape
    target = torch.arange(k).repeat_interleave(s)
    assert torch.equal(target, up.ref("memory_loss.target"))
    with torch.no_grad():
        logits = plugin.decoder_stage2(plugin.memory.reshape(k * s, c, 1, 1)).reshape(k * s, -1)
        close(logits, up.ref("memory_loss.logits_bn_eval"), **UPDATE_TOL)
        close(plugin.memory_loss(), up.ref("memory_loss.loss_bn_eval"), **UPDATE_TOL)
        plugin.decoder_stage2.train()
        plugin.decoder_stage2.dropout.p = 0.0
        logits_train = plugin.decoder_stage2(plugin.memory.reshape(k * s, c, 1, 1)).reshape(k * s, -1)
        close(logits_train, up.ref("memory_loss.logits_bn_train"), **UPDATE_TOL)
        close(plugin.memory_loss(), up.ref("memory_loss.loss_bn_train"), **UPDATE_TOL)
    up.assert_all_compared(lambda k: k.startswith("memory_loss."))


def _train_model(path: str, bn_train: bool):
    model, _, _ = load_model(path)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not bn_train:
            m.eval()
        if isinstance(m, nn.Dropout2d):
            m.p = 0.0
    return model


@pytest.mark.parametrize("folder", FOLDERS)
def test_train_step_matches_golden(converted, folder):
    atol, rtol = tolerances(folder)["train_step"]
    recipe = recipe_of(folder)
    io = Stored("ssseg-mcibi", folder, "io.safetensors")
    ts = Stored("ssseg-mcibi", folder, "train_step.safetensors")
    lr = float(ts["learning_rate"])
    criterion = Criterion(recipe)
    iters_per_epoch = 5
    step_of_epoch = (int(ts["epoch"]) - 1) * iters_per_epoch  # ssseg epochs are 1-based

    def step(bn_train: bool, step_index: int):
        model = _train_model(converted[folder], bn_train)
        plugin = model.plugins["memory"]
        close(plugin.memory, ts.ref("memory_before"), 0.0, 0.0)
        plugin.before_train_step(step_index, lr, iters_per_epoch)
        out = model(io["input"], ts["labels"])
        loss, terms = criterion(model, out, ts["labels"], step_index)
        return model, out, loss, terms

    model, out, loss, terms = step(False, step_of_epoch)
    plugin = model.plugins["memory"]
    close(out["aux_logits"], ts.ref("aux_logits"), atol, rtol)
    close(plugin.memory, ts.ref("memory_after"), atol, rtol)
    names = {
        "loss_aux": "loss_aux",
        "loss_cls_stage1": "loss_cls_stage1",
        "loss_ce": "loss_cls_stage2",
        "loss_memory": "loss_memory",
    }
    assert set(terms) == set(names)
    for ours, theirs in names.items():
        assert terms[ours] == pytest.approx(float(ts.ref(f"losses.{theirs}")), abs=atol, rel=rtol), ours
    close(loss.detach(), ts.ref("loss"), atol, rtol)
    # ssseg's logged total is the sum of its logged terms: ours too
    assert float(loss.detach()) == pytest.approx(float(ts.ref("losses.loss_total")), abs=atol, rel=rtol)
    # the memory loss reads the memory AFTER this step's update (not the one the forward used)
    assert abs(terms["loss_memory"] - float(ts.ref("loss_memory_if_computed_on_memory_before"))) > 10 * atol
    loss.backward()
    close(plugin.decoder_stage1.conv_seg.weight.grad, ts.ref("grad.decoder_stage1.4.weight"), atol, rtol)
    close(plugin.decoder_stage2.conv_seg.weight.grad, ts.ref("grad.decoder_stage2.4.weight"), atol, rtol)

    # first epoch: no memory loss
    _, _, loss1, terms1 = step(False, step_of_epoch - 1)
    assert "loss_memory" not in terms1
    close(loss1.detach(), ts.ref("epoch1.loss"), atol, rtol)
    assert float(loss1.detach()) == pytest.approx(float(ts.ref("epoch1.loss_total")), abs=atol, rel=rtol)

    # BN in train mode (batch statistics), as during official training
    _, _, loss_bt, terms_bt = step(True, step_of_epoch)
    for ours, theirs in names.items():
        assert terms_bt[ours] == pytest.approx(float(ts.ref(f"bn_train.losses.{theirs}")), abs=atol, rel=rtol), ours
    total_bt = sum(v for k, v in terms_bt.items() if not k.startswith("stat_"))
    assert total_bt == pytest.approx(float(ts.ref("bn_train.losses.loss_total")), abs=atol, rel=rtol)
    ts.assert_all_compared()


def test_viz_memory_writes_pictures(converted, tmp_path):
    proc = run_cli("viz", "memory", converted["ssseg-mcibi-multifeat"], "-o", str(tmp_path / "mem"), cwd=tmp_path)
    for name in ("memory_similarity.png", "memory_pca.png"):
        assert (tmp_path / "mem" / name).stat().st_size > 1000
        assert name in proc.stdout.replace("\n", "")  # rich wraps long paths
