"""ctxseg.weights and `ctxseg weights`: registry rows, download (progress, resume, verify, lock),
conversion once per layout (the same tensors as `ctxseg convert`), the failure messages, and the
official init. Every file comes from a loopback HTTP server behind CTXSEG_WEIGHTS_MIRROR; no test
touches the real network."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ctxseg.config import load_recipe, to_toml
from ctxseg.errors import UserError
from tests.conftest import REPO, golden, run_cli
from tests.weights_zoo import Zoo, write_registry

OCR_TINY = str(REPO / "tests" / "recipes" / "mmseg_ocrnet_hrnet.toml")


# --------------------------------------------------------------------------------------------
# a loopback model zoo with faults (tests/weights_zoo.py)


@pytest.fixture
def zoo():
    with Zoo.running() as z:
        yield z


@pytest.fixture
def env(tmp_path, monkeypatch, zoo):
    """CTXSEG_HOME in tmp_path, the zoo as mirror, fast retries; `env.registry(rows)` writes a user registry."""
    for key, value in zoo.env(tmp_path / "home", seed_layout=False).items():
        monkeypatch.setenv(key, value)

    class Env:
        home = tmp_path / "home"

        def registry(self, rows: dict[str, dict], file: str = "lab.toml") -> Path:
            path = write_registry(tmp_path / file, rows)
            monkeypatch.setenv("CTXSEG_WEIGHTS_REGISTRY", str(path))
            return path

        serve = staticmethod(zoo.serve)

    return Env()


# --------------------------------------------------------------------------------------------
# tiny official checkpoints, one per layout: (file bytes, recipe path)


def _cac_pth(tmp: Path) -> tuple[bytes, str]:
    from ctxseg.models.segmentor import build_segmentor
    from tests.test_cac_convert import TINY, _mmseg_name

    torch.manual_seed(0)
    model = build_segmentor(load_recipe(TINY))
    head = torch.load(golden("cac", "fcn-cac", "checkpoint.pth"), weights_only=True)
    state = OrderedDict((_mmseg_name(k), v) for k, v in model.state_dict().items() if k.startswith("backbone."))
    state.update(head["state_dict"])
    path = tmp / "fcn_cac_tiny.pth"
    torch.save({"meta": head["meta"], "state_dict": state}, path)
    return path.read_bytes(), TINY


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, tuple[bytes, str]]:
    from ctxseg.config import validate_recipe
    from tests.golden_cases import contrast_model_recipe, ssseg_mcibi_recipe

    tmp = tmp_path_factory.mktemp("layouts")
    out = {"mmseg": (golden("mmseg-ocrnet-hrnet", "checkpoint.pth").read_bytes(), OCR_TINY)}
    ssseg = tmp / "mcibi_tiny.toml"
    ssseg.write_text(to_toml(ssseg_mcibi_recipe("ssseg-mcibi-deeplabv3")) + "\n")
    out["ssseg"] = (golden("ssseg-mcibi-deeplabv3", "checkpoint.pth").read_bytes(), str(ssseg))
    raw = contrast_model_recipe("hrnet-contrast")
    validate_recipe(raw)
    openseg = tmp / "contrast_tiny.toml"
    openseg.write_text(to_toml(raw) + "\n")
    out["openseg"] = (golden("contrastiveseg", "hrnet-contrast", "checkpoint.pth").read_bytes(), str(openseg))
    out["cac"] = _cac_pth(tmp)
    return out


def _convert_like_cli(fmt: str, data: bytes, recipe: str, tmp: Path) -> Path:
    """What `ctxseg convert FMT FILE --recipe R -o OUT` writes (the same driver, in-process)."""
    from rich.console import Console

    from ctxseg.engine.conversion import keymap_for_format, run_conversion

    src = tmp / f"src-{fmt}.pth"
    src.write_bytes(data)
    dst = tmp / f"cli-{fmt}.safetensors"
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    run_conversion(fmt, src, recipe, dst, keymap_for_format(fmt, quiet), console=quiet)
    return dst


def _same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


# --------------------------------------------------------------------------------------------
# the registry


def test_registry_rows_are_checked(env, tmp_path):
    from ctxseg.weights import find, list_entries

    path = env.registry({"x": {"kind": "released", "url": "https://h/x.pth", "sha256": "ab12cd34", "layut": "mmseg"}})
    with pytest.raises(UserError, match=r"lab.toml: \[weights.x\]: unknown key 'layut' \(did you mean 'layout'\?\)"):
        list_entries()
    path.write_text('[weights.x]\nkind = "released"\nsha256 = "ab12cd34"\nlayout = "mmseg"\nrecipe = "demo"\n')
    with pytest.raises(UserError, match=r"\[weights.x\]: 'url' is missing"):
        list_entries()
    path.write_text('[weights.x]\nkind = "released"\nfetchable = false\nlayout = "mmseg"\nrecipe = "demo"\n')
    with pytest.raises(UserError, match=r"\[weights.x\]: a file that is not fetchable needs 'page'"):
        list_entries()
    path.write_text('[weights.x]\nurl = "https://h/x.pth"\nsha256 = "zz"\nlayout = "mmseg"\nrecipe = "demo"\n')
    with pytest.raises(UserError, match="sha256 must be 6 to 64 hex digits"):
        list_entries()
    env.registry({"x": {"url": "https://example.org/a/b/x-ab12cd34.pth", "sha256": "AB12CD34", "layout": "mmseg"}})
    with pytest.raises(UserError, match="a released model needs 'recipe'"):
        list_entries()
    env.registry(
        {
            "my-ocr": {"url": "https://example.org/a/b/x-ab12cd34.pth", "sha256": "ab12cd34", "layout": "mmseg"}
            | {"recipe": "tiny.toml"},
            "my-init": {"kind": "init", "url": "https://example.org/i.pth", "sha256": "ab12cd34", "layout": "mmcls"}
            | {"recipes": ["tiny"]},
        }
    )
    e = find("tiny")  # a recipe file's stem finds its released model
    assert e.name == "my-ocr" and e.recipe == str(tmp_path / "tiny.toml") and e.file == "x-ab12cd34.pth"
    assert e.download_url == f"{os.environ['CTXSEG_WEIGHTS_MIRROR']}/a/b/x-ab12cd34.pth"
    assert find("tiny", init=True).name == "my-init" and not e.cached
    with pytest.raises(UserError, match="No weights entry 'nope'"):
        find("nope")


# --------------------------------------------------------------------------------------------
# download + verify + convert, per layout


@pytest.mark.parametrize("fmt", ["mmseg", "ssseg", "openseg", "cac"])
def test_get_converts_each_layout_like_ctxseg_convert(env, zoo, layouts, fmt, tmp_path, monkeypatch):
    from ctxseg import weights
    from ctxseg.engine.checkpoint import load_model

    data, recipe = layouts[fmt]
    name = f"tiny_{fmt}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    env.registry({f"tiny-{fmt}": env.serve(name, data, layout=fmt, recipe=recipe, prefix=(fmt == "mmseg"))})
    path = weights.get(f"tiny-{fmt}", progress=False)
    assert path == env.home / "weights" / "converted" / f"tiny-{fmt}.safetensors"
    assert (env.home / "weights" / "raw" / f"tiny-{fmt}" / name).read_bytes() == data
    _same_tensors(path, _convert_like_cli(fmt, data, recipe, tmp_path))
    load_model(path)  # a full ctxseg checkpoint
    report = json.loads((path.parent / f"tiny-{fmt}.report.json").read_text())
    assert report["entry"] == f"tiny-{fmt}" and report["mapped"] > 0 and report["source_tensors"] > 0
    assert "mapped" in (path.parent / f"tiny-{fmt}.report.txt").read_text()
    # a second get is instant and makes no request (even with the server gone)
    n = len(zoo.log)
    monkeypatch.setenv("CTXSEG_WEIGHTS_MIRROR", "http://127.0.0.1:9/zoo")
    t = time.perf_counter()
    assert weights.get(f"tiny-{fmt}") == path
    assert time.perf_counter() - t < 0.5 and len(zoo.log) == n


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """`ctxseg ARGS` in this process (the CLI's own main: exit codes and messages as in a shell)."""
    from ctxseg.cli import main

    capsys.readouterr()
    old = sys.argv
    sys.argv = ["ctxseg", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_get_prints_path_last_and_matches_ctxseg_convert(env, zoo, layouts, tmp_path, capsys):
    data, recipe = layouts["mmseg"]
    env.registry({"tiny-ocr": env.serve("ocr_tiny.pth", data, layout="mmseg", recipe=recipe)})
    proc = run_cli("weights", "get", "tiny-ocr", cwd=tmp_path)  # the real command, in a subprocess
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.name == "tiny-ocr.safetensors"
    assert "ocr_tiny.pth" in proc.stderr and "MB" in proc.stderr  # the progress bar: label, bytes
    src = tmp_path / "ocr_tiny.pth"
    src.write_bytes(data)
    code, _, _ = _cli(capsys, "convert", "mmseg", str(src), "--recipe", recipe, "-o", str(tmp_path / "cli.safetensors"))
    assert code == 0
    _same_tensors(path, tmp_path / "cli.safetensors")
    # `weights list --json`: every entry with its fields, now cached
    code, out, _ = _cli(capsys, "weights", "list", "--json")
    row = next(r for r in json.loads(out) if r["name"] == "tiny-ocr")
    assert {"name", "recipe", "kind", "url", "sha256", "layout", "source", "cached"} <= set(row)
    assert row["cached"] is True and row["layout"] == "mmseg" and row["kind"] == "released"
    code, out, _ = _cli(capsys, "weights", "list", recipe)
    assert code == 0 and "tiny-ocr" in out and "yes" in out


def test_ctxseg_layout_is_used_as_is(env, layouts, tmp_path):
    from ctxseg import weights

    data, recipe = layouts["mmseg"]
    converted = _convert_like_cli("mmseg", data, recipe, tmp_path)
    env.registry({"mine": env.serve("mine.safetensors", converted.read_bytes(), layout="ctxseg", recipe=recipe)})
    path = weights.get("mine", progress=False)
    assert path == weights.fetch("mine") and path.read_bytes() == converted.read_bytes()


# --------------------------------------------------------------------------------------------
# the official initialisation


def test_init_entry_converts_and_official_pretrained_loads_it(env, zoo, tmp_path, monkeypatch):
    from ctxseg import weights
    from ctxseg.models.backbones.pretrained import check_recipe_pretrained
    from ctxseg.models.segmentor import build_segmentor

    ckpt = torch.load(golden("mmseg-ocrnet-hrnet", "checkpoint.pth"), weights_only=True)["state_dict"]
    bb = {k.removeprefix("backbone."): v for k, v in ckpt.items() if k.startswith("backbone.")}
    src = tmp_path / "hrnet_tiny_init.pth"
    torch.save({"state_dict": bb}, src)
    recipe = tmp_path / "ocr_official.toml"
    recipe.write_text(f'extends = "{OCR_TINY}"\n\n[model.backbone]\npretrained = "official"\n')
    row = env.serve("hrnet_tiny_init.pth", src.read_bytes(), kind="init", layout="mmcls-hrnet", recipe=str(recipe))
    env.registry({"init-hrnet-tiny": row | {"official_name": "open-mmlab://msra/hrnetv2_tiny"}})
    # checked before training without any request
    line = check_recipe_pretrained(load_recipe(recipe).model.backbone, "ocr_official")
    assert "init-hrnet-tiny" in line and "to download" in line and zoo.log == []
    with pytest.raises(UserError, match="lists no initialisation for recipe 'other'"):
        check_recipe_pretrained({"pretrained": "official"}, "other")
    with pytest.raises(UserError, match="No weights entry 'nope'"):
        check_recipe_pretrained({"pretrained": "official:nope"})
    # `get --init`: the backbone's tensors under ctxseg names, exactly the file's
    path = weights.get("ocr_official", init=True, progress=False)
    tensors = load_file(str(path))
    assert sorted(tensors) == sorted(bb)
    assert all(torch.equal(tensors[k], bb[k]) for k in tensors)
    assert json.loads(path.with_name("init-hrnet-tiny.report.json").read_text())["tensors"] == len(tensors)
    # `pretrained = "official"`: the recipe's init through the registry, no request once cached
    n = len(zoo.log)
    monkeypatch.setenv("CTXSEG_WEIGHTS_MIRROR", "http://127.0.0.1:9/zoo")
    model = build_segmentor(load_recipe(recipe))
    assert len(zoo.log) == n
    state = model.backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tensors.items())
    spelled = load_recipe(OCR_TINY, ["model.backbone.pretrained=official:init-hrnet-tiny"])
    assert torch.equal(build_segmentor(spelled).backbone.state_dict()["conv1.weight"], bb["conv1.weight"])


# --------------------------------------------------------------------------------------------
# faults


def _blob(n: int = 300_000, seed: int = 0) -> bytes:
    return (
        torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8).numpy().tobytes()
    )


def test_resume_after_dropped_connection(env, zoo):
    from ctxseg import weights

    data = _blob()
    env.registry({"blob": env.serve("blob.bin", data)})
    zoo.drops["blob.bin"] = [100_000]
    path = weights.fetch("blob", progress=False)
    assert path.read_bytes() == data and not path.with_name("blob.bin.part").exists()
    reqs = zoo.requests("blob.bin")
    assert [r["range"] for r in reqs] == [None, "bytes=100000-"] and reqs[1]["status"] == 206
    assert sum(r["sent"] for r in reqs) == len(data)  # nothing downloaded twice


def test_server_ignoring_range_restarts(env, zoo):
    from ctxseg import weights

    data = _blob(seed=1)
    env.registry({"blob": env.serve("blob.bin", data)})
    zoo.drops["blob.bin"] = [50_000]
    zoo.ignore_range.add("blob.bin")
    assert weights.fetch("blob", progress=False).read_bytes() == data
    assert [r["status"] for r in zoo.requests("blob.bin")] == [200, 200]


def _nothing_cached(env, name: str, *, part_ok: bool = False) -> None:
    raw = env.home / "weights" / "raw"
    files = [p.name for p in raw.rglob("*") if p.is_file() and not p.name.endswith(".lock")] if raw.exists() else []
    assert files == ([f"{name}.part"] if part_ok else []), files


def test_wrong_hash_refused_and_nothing_cached(env, zoo):
    from ctxseg import weights

    row = env.serve("blob.bin", _blob())
    env.registry({"blob": row | {"sha256": "0" * 64}})
    with pytest.raises(
        UserError, match=r"wrong sha256; nothing was cached.\n  expected: 0{64}\n  got:      [0-9a-f]{64}"
    ):
        weights.get("blob", progress=False)
    _nothing_cached(env, "blob.bin")


def test_not_found(env, zoo):
    from ctxseg import weights

    row = env.serve("blob.bin", b"x" * 10)
    del zoo.files["blob.bin"]
    env.registry({"blob": row})
    with pytest.raises(UserError, match="the server has no such file \\(HTTP 404") as e:
        weights.get("blob", progress=False)
    assert f"{zoo.url}/zoo/zoo/blob.bin" in str(e.value) and "ctxseg weights add FILE --name blob" in str(e.value)
    assert len(zoo.requests("blob.bin")) == 1  # a 404 is not retried
    _nothing_cached(env, "blob.bin")


def test_offline_message(env, monkeypatch):
    from ctxseg import weights

    data = b"y" * 1000
    row = env.serve("blob.bin", data)
    env.registry({"blob": row})
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("CTXSEG_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}")
    with pytest.raises(UserError) as e:
        weights.get("blob", progress=False)
    msg = str(e.value)
    assert "cannot reach the server (no network?)" in msg and f"http://127.0.0.1:{port}/zoo/blob.bin" in msg
    assert row["sha256"] in msg and str(env.home / "weights" / "raw" / "blob" / "blob.bin") in msg
    assert "ctxseg weights add FILE --name blob" in msg and "published at https://example.org/zoo/blob.bin" in msg
    _nothing_cached(env, "blob.bin")


def test_server_dropping_every_time_gives_up_and_keeps_part(env, zoo):
    from ctxseg import weights

    data = _blob()
    env.registry({"blob": env.serve("blob.bin", data)})
    zoo.drops["blob.bin"] = [1000, 1000, 1000]
    with pytest.raises(UserError, match="kept dropping the connection .*gave up after 3 tries") as e:
        weights.fetch("blob", progress=False)
    assert "resumes next time" in str(e.value)
    _nothing_cached(env, "blob.bin", part_ok=True)
    assert weights.fetch("blob", progress=False).read_bytes() == data  # the next try resumes
    assert zoo.requests("blob.bin")[-1]["range"] == "bytes=3000-"


class _FaultyFile:
    def __init__(self, f, fault: BaseException, after: int):
        self.f, self.fault, self.after = f, fault, after

    def write(self, b):
        if self.after <= 0:
            raise self.fault
        self.after -= 1
        return self.f.write(b)

    def __getattr__(self, k):
        return getattr(self.f, k)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return self.f.__exit__(*a)


def _faulty_open(fault: BaseException, after: int):
    def fake(path, mode="r", *a, **kw):
        f = open(path, mode, *a, **kw)
        return _FaultyFile(f, fault, after) if str(path).endswith(".part") else f

    return fake


def test_full_disk(env, zoo, monkeypatch):
    from ctxseg import weights
    from ctxseg.weights import download

    env.registry({"blob": env.serve("blob.bin", _blob(3_000_000))})
    monkeypatch.setattr(
        download, "open", _faulty_open(OSError(errno.ENOSPC, "No space left on device"), 1), raising=False
    )
    with pytest.raises(UserError, match="the disk is full .*Nothing was cached"):
        weights.get("blob", progress=False)
    _nothing_cached(env, "blob.bin")


def test_read_only_cache(env, zoo, monkeypatch):
    from ctxseg import weights

    env.registry({"blob": env.serve("blob.bin", b"z" * 100)})
    if os.geteuid() != 0:
        env.home.mkdir()
        env.home.chmod(0o555)
    else:  # root writes anywhere: the file system says read-only instead
        real = os.open

        def ro(path, *a, **kw):
            if str(env.home) in str(path):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real(path, *a, **kw)

        monkeypatch.setattr(os, "open", ro)
        real_mkdir = Path.mkdir

        def ro_mkdir(self, *a, **kw):
            if str(env.home) in str(self):
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return real_mkdir(self, *a, **kw)

        monkeypatch.setattr(Path, "mkdir", ro_mkdir)
    try:
        with pytest.raises(UserError, match=r"Could not write .*(read-only|permission denied).*CTXSEG_HOME"):
            weights.get("blob", progress=False)
    finally:
        monkeypatch.undo()
        if env.home.exists():
            env.home.chmod(0o755)
    assert zoo.log == []


def test_ctrl_c_leaves_only_a_part_file_then_resumes(env, zoo, monkeypatch):
    from ctxseg import weights
    from ctxseg.weights import download

    data = _blob(3_000_000)
    env.registry({"blob": env.serve("blob.bin", data)})
    monkeypatch.setattr(download, "CHUNK", 1 << 16)
    monkeypatch.setattr(download, "open", _faulty_open(KeyboardInterrupt(), 3), raising=False)
    with pytest.raises(KeyboardInterrupt):
        weights.fetch("blob", progress=False)
    _nothing_cached(env, "blob.bin", part_ok=True)
    monkeypatch.undo()
    monkeypatch.setenv("CTXSEG_HOME", str(env.home))  # undo dropped the env: set what the fetch needs again
    monkeypatch.setenv("CTXSEG_WEIGHTS_MIRROR", f"{zoo.url}/zoo")
    monkeypatch.setenv("CTXSEG_WEIGHTS_REGISTRY", str(env.home.parent / "lab.toml"))
    assert weights.fetch("blob", progress=False).read_bytes() == data
    assert zoo.requests("blob.bin")[-1]["range"] == f"bytes={3 << 16}-"


def test_two_processes_download_once(env, zoo, tmp_path):
    data = _blob(2_000_000)
    env.registry({"blob": env.serve("blob.bin", data)})
    zoo.delay = 0.01  # ~0.3 s per download: the second process arrives while the first downloads
    code = "from ctxseg import weights; print(weights.get('blob', progress=False))"
    full_env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=full_env, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] and Path(outs[0]).read_bytes() == data
    assert len(zoo.requests("blob.bin")) == 1


# --------------------------------------------------------------------------------------------
# `ctxseg weights add`


def test_unpublished_hash_is_recorded_at_first_download_and_checked_after(env, zoo, tmp_path, capsys):
    """ssseg's and openseg's GitHub release assets come without a published hash: the digest seen
    first is recorded beside the file and named in the report; a later import must match it."""
    from ctxseg import weights
    from ctxseg.weights import cache

    data = _blob(seed=3)
    row = env.serve("blob.bin", data)
    del row["sha256"]
    env.registry({"blob": row})
    entry = weights.find("blob")
    assert entry.sha256 == "" and "not published" in entry.hash_text
    path = weights.fetch("blob", progress=False)
    digest = hashlib.sha256(data).hexdigest()
    assert path.read_bytes() == data and cache.recorded_digest_path(entry).read_text().strip() == digest
    assert "publishes no hash" in capsys.readouterr().err and cache.file_digest(entry) == digest
    # importing another file under that name is refused against the recorded digest
    other = tmp_path / "blob.bin"
    other.write_bytes(_blob(seed=4))
    (env.home / "weights" / "raw" / "blob" / "blob.bin").unlink(missing_ok=True)
    with pytest.raises(UserError, match="differs from the one recorded at the first import"):
        cache.add(entry, other)
    # `weights add FILE` with neither --recipe nor --name: told by its file name (no hash to match)
    good = tmp_path / "good" / "blob.bin"
    good.parent.mkdir()
    good.write_bytes(data)
    code, out, err = _cli(capsys, "weights", "add", str(good))
    assert code == 0 and out.strip().endswith("blob.bin") and "no hash published" in err
    code, _, err = _cli(capsys, "weights", "add", str(tmp_path / "good" / "nope.pth"))
    assert code == 2 and "No such file" in err


def test_cli_add_verifies_the_hash(env, zoo, tmp_path, capsys):
    good, bad = _blob(5000), _blob(5000, seed=3)
    row = env.serve("blob.bin", good, recipe="demo")
    del zoo.files["blob.bin"]  # the server does not have it: the user fetched it elsewhere
    env.registry({"blob": row})
    (tmp_path / "bad.bin").write_bytes(bad)
    code, _, err = _cli(capsys, "weights", "add", str(tmp_path / "bad.bin"), "--name", "blob")
    assert code == 2
    assert row["sha256"] in err and hashlib.sha256(bad).hexdigest() in err and "nothing was imported" in err
    _nothing_cached(env, "blob.bin")
    (tmp_path / "good.bin").write_bytes(good)
    code, out, _ = _cli(capsys, "weights", "add", str(tmp_path / "good.bin"), "--recipe", "demo")
    path = Path(out.strip().splitlines()[-1])
    assert code == 0 and path == env.home / "weights" / "raw" / "blob" / "blob.bin" and path.read_bytes() == good
    assert zoo.log == []


# --------------------------------------------------------------------------------------------
# the built-in table: optional


def test_missing_or_present_builtin_table(env, tmp_path, monkeypatch, capsys):
    from ctxseg.weights import find, list_entries, registry

    monkeypatch.delenv("CTXSEG_WEIGHTS_REGISTRY", raising=False)
    monkeypatch.setattr(registry, "builtin_path", lambda: None)  # a tree without recipes/provenance/weights.toml
    assert list_entries() == []
    code, out, _ = _cli(capsys, "weights", "list")
    assert code == 0 and "0 entries" in out
    code, out, _ = _cli(capsys, "weights", "list", "--json")
    assert code == 0 and json.loads(out) == []
    with pytest.raises(UserError, match=r"registries read: none \(no built-in table"):
        find("ocrnet-hr18-cityscapes-80k")
    code, out, _ = _cli(capsys, "recipes", "show", "ocrnet-hr18-cityscapes-80k", "--provenance")
    assert code == 0 and "miou_ms" in out
    # a built-in table is read first; a user row of the same name replaces its row
    builtin = write_registry(tmp_path / "weights.toml", {"ocr": env.serve("a.pth", b"a", layout="mmseg")})
    monkeypatch.setattr(registry, "builtin_path", lambda: builtin)
    assert [e.origin for e in list_entries()] == [str(builtin)]
    env.registry({"ocr": env.serve("b.pth", b"b", layout="mmseg"), "mine": env.serve("c.pth", b"c")})
    assert [(e.name, e.file) for e in list_entries()] == [("ocr", "b.pth"), ("mine", "c.pth")]
    code, out, _ = _cli(capsys, "weights", "list", "demo")
    assert code == 0 and "ocr" in out and "mine" in out


def test_a_recipe_file_is_found_by_its_name_key(env, tmp_path, capsys):
    """A row's recipe file that sets `name` (tests/recipes/owndata_tiny.toml: "owndata-tiny") is found
    by that name, as `ctxseg train --init official` asks for it, and by the file's stem."""
    from ctxseg.weights import find

    recipe = str(REPO / "tests" / "recipes" / "owndata_tiny.toml")
    env.registry(
        {
            "tiny-released": env.serve("t.safetensors", b"t", recipe=recipe),
            "tiny-init": env.serve("i.pth", b"i", kind="init", layout="mmcls", recipe=recipe),
        }
    )
    for name in ("owndata-tiny", "owndata_tiny", recipe):
        assert find(name).name == "tiny-released" and find(name, init=True).name == "tiny-init"
    code, out, _ = _cli(capsys, "weights", "list", "owndata-tiny", "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["tiny-released", "tiny-init"]
