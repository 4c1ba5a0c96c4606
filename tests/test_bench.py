"""The throughput benchmark's three modes on the CPU: timed epochs, operator counts and FLOP counts."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness import bench
from harness.config import TrainConfig
from methods import get_method

CPU = torch.device("cpu")


def _forward_flops(arch: str, size: int = 32) -> float:
    """FLOPs of one plain forward pass of ``arch`` per image."""
    info = bench.synthetic(size)
    model = get_method("pgd_at")(TrainConfig(), info.eps).build_model(arch, info).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.rand(4, 3, size, size))
    return fc.get_total_flops() / 4


def test_pgd_at_step_costs_seven_input_gradients_and_one_training_pass():
    # 7 attack steps of forward + input gradient (2F each, no weight gradient) and one training pass
    # (forward, weight and input gradients, 3F, less the first convolution's input gradient): 16F < . <= 17F.
    # Attack steps that computed weight gradients too would cost 24F.
    f = _forward_flops("small_cnn")
    total = bench.flops_per_image("pgd_at", "small_cnn", CPU, batch_size=12)
    assert 16 * f < total <= 17 * f
    # --attack pgd3: 3 attack steps, so 8F < . <= 9F
    assert 8 * f < bench.flops_per_image("pgd_at", "small_cnn", CPU, batch_size=12, attack="pgd3") <= 9 * f


def test_float_attacks_half_the_batch_and_oat_five_sixths():
    # per image, FLOAT: (6 rows x 7 x 2F + 18 rows x 3F) / 12 = 11.5F; OAT: (10 x 7 x 2F + 22 x 3F) / 12 = 17.2F
    f = _forward_flops("small_cnn")
    float_ = bench.flops_per_image("float", "small_cnn", CPU, batch_size=12)
    oat = bench.flops_per_image("oat", "small_cnn", CPU, batch_size=12)
    assert float_ / f == pytest.approx(11.5, rel=0.05)
    assert oat / f == pytest.approx(17.2, rel=0.05)


def test_cli_prints_each_mode(capsys):
    common = ["--methods", "pgd_at,float", "--arch", "small_cnn", "--batch-size", "8", "--device", "cpu"]
    assert bench.main(common + ["--iters", "2"]) == 0
    assert bench.main(common + ["--ops"]) == 0
    assert bench.main(common + ["--flops"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert all("images/s" in line and "cpu" in line for line in lines[:2])
    assert all("operators per training step" in line for line in lines[2:4])
    assert all("GFLOP per training image" in line for line in lines[4:])


@pytest.mark.parametrize("flags", [["--ops", "--flops"], ["--ops", "--compile", "default"],
                                   ["--flops", "--precision", "bf16"]])
def test_cli_refuses_counts_with_settings_they_ignore(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--methods", "pgd_at", "--arch", "small_cnn", "--device", "cpu", *flags])
    assert exc.value.code == 2 and "--ops" in capsys.readouterr().err
