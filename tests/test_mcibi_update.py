"""The vectorised MCIBI memory update equals a plain per-class loop (the reference semantics) on
random data, for both strategies, one or several slots, band chunking and on-the-fly upsampling;
and the memory is averaged across processes (2-process gloo)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from ctxseg.models.context.base import mean_across_processes
from ctxseg.models.context.memory import update_memory


def naive_update(memory, features, labels, momentum, strategy, ignore_index):
    """A direct transcription of ssseg's FeaturesMemory.update: one Python iteration per class."""
    memory = memory.clone()
    k, s, c = memory.shape
    f_all = features.permute(0, 2, 3, 1).reshape(-1, c)
    y_all = labels.reshape(-1)
    for cls in y_all.unique().tolist():
        if cls == ignore_index:
            continue
        f = f_all[y_all == cls]
        zero = [i for i in range(s) if bool((memory[cls, i] == 0).all())]
        if zero:
            memory[cls, zero[0]] = f.mean(0)
            continue
        if s == 1:
            if strategy == "mean":
                agg = f.mean(0)
            else:
                sim = F.cosine_similarity(f, memory[cls, 0].expand_as(f))
                agg = (f * ((1 - sim) / (1 - sim).sum()).unsqueeze(-1)).sum(0)
            memory[cls, 0] = (1 - momentum) * memory[cls, 0] + momentum * agg
        else:
            rel = F.normalize(f, dim=1) @ F.normalize(memory[cls].t(), dim=0)
            arg = rel.argmax(1)
            new = memory[cls].clone()
            for i in range(s):
                fi = f[arg == i]
                sim = F.cosine_similarity(fi, memory[cls, i].expand_as(fi))
                agg = (fi * ((1 - sim) / (1 - sim).sum()).unsqueeze(-1)).sum(0)
                new[i] = memory[cls, i] * (1 - momentum) + agg * momentum
            memory[cls] = new
    return memory


def random_case(seed, b, c, h, w, k, s, zero_rows=(), zero_slots=()):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(b, c, h, w, generator=g).abs() + 0.1 * torch.randn(b, c, h, w, generator=g)
    labels = torch.randint(0, k - 1, (b, h, w), generator=g)  # class k-1 absent
    labels[:, :2, :3] = -1  # ignored pixels
    memory = torch.rand(k, s, c, generator=g)
    for r in zero_rows:
        memory[r] = 0
    for r, sl in zero_slots:
        memory[r, sl] = 0
    return memory, features, labels


@pytest.mark.parametrize("strategy", ["mean", "cosine_similarity"])
@pytest.mark.parametrize("seed,shape", [(1, (2, 16, 12, 10, 6)), (7, (3, 8, 9, 17, 11))])
def test_single_slot_equals_loop(strategy, seed, shape):
    b, c, h, w, k = shape
    memory, features, labels = random_case(seed, b, c, h, w, k, 1, zero_rows=(1, k - 1))
    expected = naive_update(memory, features, labels, 0.4, strategy, -1)
    for max_elements in (1 << 24, 5 * c):  # whole image / bands of rows
        got = memory.clone()
        update_memory(got, features, labels, 0.4, strategy, ignore_index=-1, max_elements=max_elements)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[k - 1], memory[k - 1])  # absent class untouched (and zero stays zero)


@pytest.mark.parametrize("seed", [3, 11])
def test_several_slots_equal_loop(seed):
    memory, features, labels = random_case(seed, 2, 8, 10, 12, 5, 3, zero_rows=(2,), zero_slots=((1, 1), (1, 2)))
    memory[3, 2] = -memory[3, 2]  # a slot that receives no pixel: scaled by (1 - momentum)
    expected = naive_update(memory, features, labels, 0.7, "cosine_similarity", -1)
    got = memory.clone()
    update_memory(got, features, labels, 0.7, "cosine_similarity", ignore_index=-1, max_elements=100)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[3, 2], memory[3, 2] * 0.3)


@pytest.mark.parametrize("align_corners", [False, True])
def test_low_resolution_features_are_upsampled_band_by_band(align_corners):
    memory, low, _ = random_case(5, 2, 8, 5, 7, 6, 1)
    labels = torch.randint(0, 6, (2, 37, 53), generator=torch.Generator().manual_seed(2))
    full = F.interpolate(low, size=(37, 53), mode="bilinear", align_corners=align_corners)
    expected = naive_update(memory, full, labels, 0.5, "cosine_similarity", 255)
    got = memory.clone()
    update_memory(
        got, low, labels, 0.5, "cosine_similarity", ignore_index=255, align_corners=align_corners, max_elements=400
    )
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _worker(rank: int, world: int, port: int, results) -> None:
    import torch.distributed as dist

    # RANK / WORLD_SIZE as torchrun sets them: Accelerate's state (used by plug-ins) reads them
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from accelerate import PartialState

    PartialState(cpu=True)  # what the trainer's Accelerator sets up on CPU
    torch.set_num_threads(1)
    memory, features, labels = random_case(100 + rank, 1, 4, 6, 6, 4, 1, zero_rows=(0,))
    memory = torch.ones(4, 1, 4) * (rank + 1)
    memory[0] = 0
    labels[:] = 0 if rank == 0 else 1  # class 0 initialised on rank 0 only
    update_memory(memory, features, labels, 0.5, "mean", ignore_index=-1)
    memory.copy_(mean_across_processes(memory))  # MCIBIMemory.synchronise_state
    results[rank] = memory
    dist.destroy_process_group()


def test_memory_is_averaged_across_processes():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, port, results), nprocs=2, join=True)
    a, b = results[0], results[1]
    assert torch.equal(a, b)
    # rows 2, 3 (no pixels anywhere): mean of the two ranks' values (1 and 2)
    torch.testing.assert_close(a[2:], torch.full((2, 1, 4), 1.5))
    # class 0 was initialised on rank 0 only: averaged with rank 1's zeros (ssseg behaviour)
    assert torch.all(a[0] != 0)


@pytest.mark.parametrize("strategy,slots", [("cosine_similarity", 3), ("mean", 1), ("cosine_similarity", 1)])
def test_update_at_feature_resolution_equals_loop_on_upsampled_map(strategy, slots):
    """The update from low-resolution features (never upsampled: per-class interpolation weights,
    neighbour Gram values for the norms) equals the loop over the explicitly upsampled map, with
    slots to initialise, several slots and a non-integer scale."""
    memory, low, _ = random_case(13, 2, 6, 7, 9, 5, slots, zero_rows=(1,), zero_slots=((2, slots - 1),))
    labels = torch.randint(-1, 5, (2, 30, 41), generator=torch.Generator().manual_seed(4))
    full = F.interpolate(low, size=(30, 41), mode="bilinear", align_corners=False)
    expected = naive_update(memory, full, labels, 0.3, strategy, -1)
    got = memory.clone()
    update_memory(got, low, labels, 0.3, strategy, ignore_index=-1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    same = memory.clone()  # the same features given at label resolution take the other route
    update_memory(same, full, labels, 0.3, strategy, ignore_index=-1, max_elements=97)
    torch.testing.assert_close(same, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["mean", "cosine_similarity"])
def test_float64_memory_is_updated_in_float64(strategy):
    """A float64 memory (a float64 reference run, tests/test_train_golden.py) is updated in float64: the
    update agrees with the per-class loop in float64 to 1e-12, not to float32's 1e-7."""
    memory, features, labels = random_case(3, 2, 8, 9, 11, 6, 1, zero_rows=(2,))
    memory, features = memory.double(), features.double()
    want = naive_update(memory, features, labels, 0.37, strategy, -1)
    got = update_memory(memory.clone(), features, labels, 0.37, strategy, ignore_index=-1)
    assert got.dtype == torch.float64
    assert (got - want).abs().max().item() <= 1e-12 * want.abs().max().item()


def test_losses_keep_float64_logits():
    """The losses upcast half precision logits to float32 but keep float64 ones (no rounding to float32)."""
    from ctxseg.losses.cross_entropy import at_least_float32, cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 4, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, 5, (2, 4, 4), generator=g)
    assert at_least_float32(logits).dtype == torch.float64
    assert at_least_float32(logits.half()).dtype == torch.float32
    loss = cross_entropy(at_least_float32(logits), target, class_weight=torch.ones(5), avg_non_ignore=True)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - F.cross_entropy(logits, target).item()) <= 1e-14
