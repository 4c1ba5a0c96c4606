"""GPU paths (bf16 autocast, channels_last, CUDA peak memory); skipped cleanly without CUDA."""
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bench_runs_on_gpu():
    from harness.bench import bench
    r = bench("pgd_at", "preact_resnet18", 128, 5, torch.device("cuda"), None)
    assert r["precision"] == "bf16" and r["images_per_s"] > 0 and r["peak_mem_mb"] > 0


def test_training_on_gpu_matches_protocol(tmp_path, digits):
    from harness.config import from_preset
    from harness.runner import run
    cfg = from_preset("smoke")
    cfg = type(cfg)(**{**cfg.__dict__, "methods": ("pgd_at",), "out": str(tmp_path), "progress": False,
                       "device": "cuda"})
    table = run(cfg, log=lambda *_: None)
    acc = table.set_index("metric").value
    assert acc["clean_acc"] > 0.9 and acc["pgd_acc"] > 0.6
    assert (table.device != "cpu").all() and (table.precision == "bf16").all()
