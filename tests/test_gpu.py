"""GPU paths (bf16 autocast, channels_last, CUDA peak memory, torch.compile with CUDA graphs); skipped
cleanly without CUDA."""
from contextlib import contextmanager

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bench_runs_on_gpu():
    from harness.bench import bench
    r = bench("pgd_at", "preact_resnet18", 128, 5, torch.device("cuda"), None)
    assert r["precision"] == "bf16" and r["images_per_s"] > 0 and r["peak_mem_mb"] > 0


@contextmanager
def _no_graph_skips():
    """Fails if torch fell back from CUDA graphs to plain kernels inside (it only warns): a compiled test
    that passed after such a skip would have tested nothing."""
    from torch._dynamo.utils import counters
    counters["inductor"]["cudagraph_skips"] = 0
    yield
    assert counters["inductor"]["cudagraph_skips"] == 0, "torch skipped CUDA graphs (see its warning)"


def _train_on_gpu(tmp_path, method="pgd_at", evals=None, **train):
    from harness.config import apply, from_preset
    from harness.runner import run
    cfg = apply(from_preset("smoke"), dict(methods=(method,), out=str(tmp_path), progress=False, device="cuda",
                                           train=train, eval=dict(aa="off", checks=False) | (evals or {})))
    return run(cfg, log=lambda *_: None)


def test_a_job_trained_on_gpu_is_scored_again_from_its_checkpoint(tmp_path, digits):
    """Re-scoring a finished GPU job (another --eval-n) loads its checkpoint onto the GPU and restores the
    saved generator states, which torch takes only as CPU byte tensors (before the fix, the states loaded
    onto the GPU met torch's check: "RNG state must be a torch.ByteTensor", a TypeError; never run until now)."""
    _train_on_gpu(tmp_path, "float", evals=dict(n=64, complexity=False), epochs=1)
    table = _train_on_gpu(tmp_path, "float", evals=dict(n=96, complexity=False), epochs=1)
    assert set(table.loc[table.metric == "clean_acc", "n"]) == {96}
    assert table.loc[table.metric == "epochs_trained", "value"].tolist() == [1]


@pytest.mark.parametrize("compile", ["off", "reduce-overhead", "cudagraphs"])
def test_training_on_gpu_matches_protocol(tmp_path, digits, compile):
    """The smoke protocol on CUDA (bf16, channels_last), also with the forward compiled into CUDA graphs:
    the same real margins as on the CPU."""
    with _no_graph_skips():
        table = _train_on_gpu(tmp_path, compile=compile)
    acc = table.set_index("metric").value
    assert acc["clean_acc"] > 0.9 and acc["pgd_acc"] > 0.6
    assert not table.device.str.startswith("cpu").any()
    # evaluation measures in fp32 (timings, counts); the model's rows say the precision it was trained in
    fp32 = table.metric.str.startswith("infer_") | table.metric.isin(
        ["macs", "nonzero_params", "params", "stored_params", "eval_time_s"])
    assert (table[~fp32].precision == "bf16").all() and (table[fp32].precision == "fp32").all()


@pytest.mark.parametrize("method", ["oat", "float"])
def test_conditioned_training_under_cuda_graphs_matches_eager(tmp_path, digits, method):
    """OAT and FLOAT trained with ``--compile cudagraphs`` (three graphs each: dual BN's row split, FLOAT's
    noise and OAT's FiLM replayed from CUDA graphs) score what the eager training scores at every lambda,
    clean and PGD-20, within the regression tier's bands (their random numbers differ, so not bit for bit)."""
    from regression import accuracies, compare
    eager = accuracies(_train_on_gpu(tmp_path / "off", method, compile="off"))
    with _no_graph_skips():
        graphs = accuracies(_train_on_gpu(tmp_path / "cudagraphs", method, compile="cudagraphs"))
    assert len(eager) == 2 * eager["lambda"].nunique()  # clean and PGD-20 at every lambda
    problems = compare(graphs, eager)  # every row within its band; a row missing on either side fails too
    assert not problems, "\n".join(problems)


def test_inference_peak_memory_leaves_out_what_the_process_holds_besides():
    """infer_peak_mem_mb: the model, its input and the pass's own peak, not the 1 GiB held beside it."""
    from harness import complexity
    from harness.models import build_model
    from harness.bench import synthetic
    model = build_model("resnet34", synthetic(32)).cuda().eval()
    x = torch.rand(16, 3, 32, 32, device="cuda")
    alone = complexity.inference_cost(model, x, model=model)["infer_peak_mem_mb"]
    ballast = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    beside = complexity.inference_cost(model, x, model=model)["infer_peak_mem_mb"]
    del ballast
    weights = complexity.resident_bytes(model) / 2**20
    assert weights < alone < 1024 and abs(beside - alone) < 0.05 * alone


@pytest.mark.parametrize("mode", ["cudagraphs", "reduce-overhead"])
def test_noise_is_drawn_afresh_at_every_replayed_pass(mode):
    """Under ``--compile`` with CUDA graphs FLOAT's noise is still drawn afresh at every forward pass: a
    replayed graph must advance the random numbers, not replay the captured ones. On one input, the logits of
    consecutive passes differ and spread over passes as much as the eager forward's do."""
    from harness.bench import synthetic
    from harness.config import TrainConfig
    from harness.train import compiled
    from methods import get_method
    torch.manual_seed(0)
    method = get_method("float")(TrainConfig(), 8 / 255)
    model = method.build_model("small_cnn", synthetic(16)).cuda().train()
    x = torch.rand(32, 3, 16, 16, device="cuda")

    def passes(n=10):  # cudagraph trees warm up, record, then replay: the last passes are replays
        method.factory.cond.set(clean=False, noise=1.0)
        return torch.stack([model(x).detach().clone() for _ in range(n)])

    eager = passes().std(0).mean().item()
    with _no_graph_skips(), compiled(model, mode, torch.device("cuda")):
        out = passes()
    assert eager > 0
    assert all(not torch.equal(out[i], out[i + 1]) for i in range(len(out) - 1))
    assert 0.5 * eager < out[-5:].std(0).mean().item() < 2 * eager
