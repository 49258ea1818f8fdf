"""Data-parallel tests: two gloo processes on CPU run the quantizer and a tiny `VQVAEModel` on different data per rank.

One spawn runs every scenario (each child pays the torch + transformers import once) and writes its final state to
a temporary folder; the tests compare the two ranks' states with each other and with single-process runs.
"""

import socket
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hf_vqvae import VQVAEConfig, VQVAEModel
from hf_vqvae.quantizer import VectorQuantizer


TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
# Spawns two processes (real DDP over gloo): the slow lane.
pytestmark = pytest.mark.slow
WORLD_SIZE = 2
JOIN_TIMEOUT = 300  # seconds: a hung collective fails the test instead of blocking CI (a slow machine needs ~60)
NUM_STEPS = 5
BATCH = 48
SIZES = {"codebook_size": 16, "codebook_dim": 4}
# 1.5 restarts nearly every code on the first call (usage 0.99 + 0.01 n < 1.5) and afterwards every code used
# fewer than twice in a call: restarts happen on every step.
THRESHOLD = 1.5
RESTART_OPTIONS = {"use_ema": True, "dead_code_threshold": THRESHOLD, "use_kmeans_init": True}
PLAIN_EMA_OPTIONS = {"use_ema": True}
STATE_KEYS = ("codebook.weight", "ema_cluster_size", "ema_embed_sum", "code_usage", "initialized")


def rank_batches(rank):
    """NUM_STEPS batches of latents, different on each rank (shifted apart so that the ranks' statistics differ)."""
    generator = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(BATCH, SIZES["codebook_dim"], generator=generator) + 2.0 * rank for _ in range(NUM_STEPS)]


def run_quantizer(options, batches, rank):
    """The same initial module on every rank (seed 0), then a rank-dependent RNG for k-means and restart sampling."""
    torch.manual_seed(0)
    quantizer = VectorQuantizer(**SIZES, **options)
    torch.manual_seed(1000 + rank)
    restarts = []
    for batch in batches:
        quantizer(batch)
        restarted = quantizer.code_usage == max(quantizer.dead_code_threshold, 1.0)
        restarts.append((restarted, quantizer.codebook.weight.detach()[restarted].clone()))
    return quantizer, restarts


def tiny_model_config():
    # conftest.make_tiny_config is not importable in the children: the same settings inline.
    return VQVAEConfig(
        image_size=16,
        hidden_channels=8,
        channel_multipliers=(1, 2),
        num_res_blocks=1,
        res_hidden_channels=8,
        codebook_size=16,
        codebook_dim=4,
        use_ema_codebook=True,
        dead_code_threshold=1.0,
        use_kmeans_init=True,
    )


def train_ddp_model(rank, broadcast_buffers):
    torch.manual_seed(0)
    model = VQVAEModel(tiny_model_config())
    ddp_model = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=broadcast_buffers)
    optimizer = torch.optim.Adam(ddp_model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(200 + rank)
    torch.manual_seed(1000 + rank)
    for _ in range(3):
        pixel_values = torch.rand(4, 3, 16, 16, generator=generator) * 2 - 1
        loss = ddp_model(pixel_values).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _ddp_worker(rank, port, out_dir):
    """Runs in each spawned child; must stay a module-level function so that spawn can import it."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        results = {}
        quantizer, restarts = run_quantizer(RESTART_OPTIONS, rank_batches(rank), rank)
        results["restart"] = {"state": quantizer.state_dict(), "restarts": restarts}
        quantizer, _ = run_quantizer(PLAIN_EMA_OPTIONS, rank_batches(rank), rank)
        results["plain"] = {"state": quantizer.state_dict()}
        for broadcast_buffers in (False, True):
            results[f"model_broadcast_{broadcast_buffers}"] = train_ddp_model(rank, broadcast_buffers)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    # Spawned children take the parent's sys.path, then import this module by name to find `_ddp_worker`.
    for path in (str(REPO_ROOT), str(TESTS_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)
    context = mp.spawn(_ddp_worker, args=(free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + JOIN_TIMEOUT
    # join() raises ProcessRaisedException (with the child's traceback) if a child fails.
    while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                process.join()
            pytest.fail(f"the {WORLD_SIZE} DDP processes did not finish within {JOIN_TIMEOUT} s")
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


def assert_identical(first, second, keys=None):
    keys = first.keys() if keys is None else keys
    assert first.keys() == second.keys()
    for key in keys:
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize("run", ["restart", "plain"])
def test_quantizer_state_is_identical_on_both_ranks(ddp_results, run):
    first, second = (result[run]["state"] for result in ddp_results)
    assert_identical(first, second, STATE_KEYS)
    assert bool(first["initialized"])


def test_restarts_happen_and_use_rank_0_vectors(ddp_results):
    total = 0
    for result in ddp_results:
        for step, (restarted, rows) in enumerate(result["restart"]["restarts"]):
            total += int(restarted.sum())
            # Both ranks restart at rank 0's vectors of that step (broadcast), not at their own.
            batch = rank_batches(0)[step]
            assert all((row == batch).all(-1).any() for row in rows)
    assert total > 0


@pytest.mark.parametrize("run,options", [("restart", RESTART_OPTIONS), ("plain", PLAIN_EMA_OPTIONS)])
def test_statistics_are_all_reduced(ddp_results, run, options):
    # A single process on rank 0's data alone ends elsewhere: the ranks really shared their statistics.
    alone, _ = run_quantizer(options, rank_batches(0), rank=0)
    ddp_state = ddp_results[0][run]["state"]
    for key in ("ema_cluster_size", "ema_embed_sum", "code_usage", "codebook.weight"):
        assert not torch.allclose(alone.state_dict()[key], ddp_state[key]), key


def test_ema_equals_single_process_on_concatenated_data(ddp_results):
    # Without k-means or restarts nothing is sampled, so DDP must equal one process seeing both ranks' batches.
    both = [torch.cat(pair) for pair in zip(rank_batches(0), rank_batches(1))]
    together, _ = run_quantizer(PLAIN_EMA_OPTIONS, both, rank=0)
    expected, actual = together.state_dict(), ddp_results[0]["plain"]["state"]
    # Counts are integers, so their sums are exact; the vector sums are added in a different order.
    assert_identical(actual, expected, ("ema_cluster_size", "code_usage", "initialized"))
    torch.testing.assert_close(actual["ema_embed_sum"], expected["ema_embed_sum"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(actual["codebook.weight"], expected["codebook.weight"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("broadcast_buffers", [False, True])
def test_ddp_model_training_keeps_ranks_identical(ddp_results, broadcast_buffers):
    # broadcast_buffers=False: only the quantizer's own collectives keep its buffers in sync.
    first, second = (result[f"model_broadcast_{broadcast_buffers}"] for result in ddp_results)
    assert_identical(first, second)
    torch.manual_seed(0)
    initial = VQVAEModel(tiny_model_config()).state_dict()
    assert bool(first["quantizer.initialized"])
    assert not torch.equal(first["encoder.proj.weight"], initial["encoder.proj.weight"])  # Adam did step
