"""Real training on the embedded digits: adversarial training works, runs resume, configs resolve."""
import json
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace

import pandas as pd
import pytest
import torch

from conftest import ROOT
from harness.config import RunConfig, from_preset
from harness.jobs import expand_jobs
from harness.runner import run
from harness.train import lr_factor
from methods import get_method
from methods.base import Method


def test_adversarial_training_beats_standard_training(tmp_path):
    """pgd_at (lambda=1) and fast_at reach far higher PGD-20 accuracy than the same model trained without
    attack (pgd_at at lambda=0), on real data, while all keep high clean accuracy."""
    cfg = from_preset("smoke")
    cfg = type(cfg)(**{**cfg.__dict__, "methods": ("pgd_at", "fast_at"), "train_lambdas": (0.0, 1.0),
                       "out": str(tmp_path), "progress": False,
                       "eval": replace(cfg.eval, aa="off", checks=False, complexity=False)})  # not tested here
    table = run(cfg, log=lambda *_: None)
    acc = table[table.metric.isin(["clean_acc", "pgd_acc"])].pivot_table(
        index="job", columns="metric", values="value")
    std = acc.loc["pgd_at-digits-small_cnn-s0-tl0"]
    for job in ("pgd_at-digits-small_cnn-s0-tl1", "fast_at-digits-small_cnn-s0"):
        assert acc.loc[job, "pgd_acc"] > std.pgd_acc + 0.3, acc
        assert acc.loc[job, "clean_acc"] > 0.9, acc
    assert std.clean_acc > 0.9 and std.pgd_acc < 0.5, acc
    # tidy table: readable with pandas alone, the required columns, accuracies as fractions
    again = pd.read_csv(tmp_path / "smoke" / "results.csv")
    for col in ("method", "dataset", "arch", "seed", "train_lambda", "lambda", "metric", "value"):
        assert col in again.columns
    accs = again[again.metric.str.endswith("_acc")].value
    assert ((accs >= 0) & (accs <= 1)).all()
    assert len(again) == len(again.drop_duplicates(["job", "lambda", "metric", "attack"]))


def _epochs(job_dir):
    path = job_dir / "epochs.csv"
    return pd.read_csv(path) if path.exists() else None


def test_kill_and_resume(tmp_path):
    """SIGKILL during the second job; rerunning skips the first job and resumes the second from its last
    finished epoch, so every epoch appears exactly once."""
    args = [sys.executable, str(ROOT / "run_all.py"), "--methods", "pgd_at", "--train-lambdas", "0,1",
            "--epochs", "12", "--out", str(tmp_path), "--no-progress", "--aa", "off", "--no-report",
            "--checks", "off", "--complexity", "off"]
    first = tmp_path / "smoke" / "pgd_at-digits-small_cnn-s0-tl0"
    second = tmp_path / "smoke" / "pgd_at-digits-small_cnn-s0-tl1"
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        hist = _epochs(second)
        if hist is not None and len(hist) >= 2:
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(_epochs(second))
    assert 2 <= done_before < 12, "kill came too late to test resuming"
    assert not (second / "rows.csv").exists()
    first_ckpt_mtime = (first / "checkpoint.pt").stat().st_mtime_ns

    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "done already, skipped" in out.stdout
    assert f"resuming {second.name} from epoch {done_before}/12" in out.stdout
    assert (first / "checkpoint.pt").stat().st_mtime_ns == first_ckpt_mtime, "finished job was retrained"
    hist = _epochs(second)
    assert list(hist.epoch) == list(range(1, 13))
    table = pd.read_csv(tmp_path / "smoke" / "results.csv")
    assert set(table.job) == {first.name, second.name}
    assert len(table) == len(table.drop_duplicates(["job", "lambda", "metric", "attack"]))


def test_lr_schedules():
    total = 100
    cyc = lr_factor("cyclic", total, 0.4)
    assert cyc(0) == 0 and cyc(40) == pytest.approx(1) and cyc(100) == pytest.approx(0) and cyc(20) == pytest.approx(0.5)
    ms = lr_factor("multistep", total)
    assert (ms(49), ms(50), ms(75)) == (1, pytest.approx(0.1), pytest.approx(0.01))
    cos = lr_factor("cosine", total)
    assert cos(0) == 1 and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0)


def test_config_precedence():
    """preset < method defaults < explicit flags."""
    cfg = from_preset("paper")
    cfg = type(cfg)(**{**cfg.__dict__, "methods": ("pgd_at", "fast_at")})
    jobs = {j.method: j.train for j in expand_jobs(cfg)}
    assert jobs["pgd_at"].epochs == 200 and jobs["pgd_at"].schedule == "multistep"
    assert jobs["fast_at"].epochs == 15 and jobs["fast_at"].schedule == "cyclic"
    assert jobs["fast_at"].train_attack == "fgsm_rs" and jobs["fast_at"].lr == 0.2
    jobs = {j.method: j.train for j in expand_jobs(cfg, {"epochs": 3, "lr": 0.01})}
    assert jobs["fast_at"].epochs == 3 and jobs["fast_at"].lr == 0.01 and jobs["pgd_at"].epochs == 3


def test_train_lambdas_expand_to_dedicated_jobs():
    cfg = RunConfig(methods=("pgd_at", "fast_at"), train_lambdas=(0.0, 0.1, 0.2, 0.3, 0.4, 1.0), seeds=(0, 1))
    jobs = expand_jobs(cfg)
    assert sum(j.method == "pgd_at" for j in jobs) == 12 and sum(j.method == "fast_at" for j in jobs) == 2
    assert len({j.name for j in jobs}) == len(jobs)


def test_a_run_of_once_for_all_methods_says_how_to_get_dedicated_models():
    """pgd_at trains one model (λ = 1) unless --train-lambdas says more; beside a once-for-all method the run
    says how to get one per λ to compare the dial with, and says nothing where that does not apply."""
    from harness.jobs import dedicated_hint
    hint = dedicated_hint(RunConfig(methods=("oat", "pgd_at")))
    assert "pgd_at at λ = 1" in hint and "--train-lambdas 0,0.1,0.2,0.3,0.4,1" in hint
    for cfg in (RunConfig(methods=("oat", "pgd_at"), train_lambdas=(0.0, 1.0)), RunConfig(methods=("pgd_at", "fast_at")),
                RunConfig(methods=("oat", "float"))):
        assert dedicated_hint(cfg) is None


class _Recording(Method):
    """Records, for every forward call during evaluation, the lambda configured and the model's mode."""
    name = "recording"

    def __init__(self):
        self.calls = []
        self.current = None

    def lambda_grid(self):
        return [0.0, 0.5, 1.0]

    @contextmanager
    def configure(self, model, lam):
        with super().configure(model, lam) as forward:
            self.current = lam

            def recorded(x):
                self.calls.append((lam, self.current, model.training, torch.is_grad_enabled()))
                return forward(x)
            yield recorded
            self.current = None


def test_every_attack_runs_on_the_scored_configuration(digits):
    from harness.config import EvalConfig
    from harness.evaluate import evaluate
    from harness.models import build_model
    model = build_model("small_cnn", digits.info)
    model.train()
    method = _Recording()
    rows = evaluate(method, model, digits, EvalConfig(attacks=("pgd3",), n=64, batch_size=32), eps=0.1, progress=False)
    assert {r["lambda"] for r in rows if r["lambda"] == r["lambda"]} == {0.0, 0.5, 1.0}  # NaN: per-job rows
    assert method.calls and all(lam == cur for lam, cur, _, _ in method.calls)
    assert not any(training for _, _, training, _ in method.calls), "a forward ran in train mode"
    assert any(grad for *_, grad in method.calls), "the attack must take gradients through the same callable"
    assert model.training, "evaluation must restore the model's mode"


def test_fast_at_guard_restores_previous_weights(digits):
    from harness.config import TrainConfig
    from harness.models import build_model
    torch.manual_seed(0)
    method = get_method("fast_at")(TrainConfig(train_attack="fgsm_rs"), eps=0.1)
    model = build_model("small_cnn", digits.info)
    x, y = digits.x_train[:128].float() / 255, digits.y_train[:128]
    method.begin_epoch(model, 0)
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # this epoch "broke" the model
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    method.prev_acc = 1.0
    out = method.end_epoch(model, 0, (x, y))
    assert out["stop"] and out["guard_pgd5_acc"] < 0.8
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())
    # no drop: training continues and the reference accuracy moves on
    method.prev_acc = 0.0
    method.begin_epoch(model, 1)
    out = method.end_epoch(model, 1, (x, y))
    assert "stop" not in out and method.prev_acc == out["guard_pgd5_acc"]


def test_compile_is_training_only_and_cuda_only():
    """``--compile`` wraps the forward only while training on CUDA: on the CPU the model is untouched, the
    class's forward comes back afterwards, and an unknown mode is a one-line error."""
    from harness.errors import LambenchError
    from harness.train import compiled
    model = torch.nn.Linear(3, 2)
    with compiled(model, "reduce-overhead", torch.device("cpu")) as m:
        assert m is model and "forward" not in vars(model)
    with compiled(model, "cudagraphs", torch.device("cpu")):
        assert "forward" not in vars(model)
    with pytest.raises(LambenchError, match="unknown compile mode 'fast'"):
        with compiled(model, "fast", torch.device("cpu")):
            pass
    with pytest.raises(LambenchError, match="leave out --backend inductor"):
        with compiled(model, "cudagraphs", torch.device("cpu"), backend="inductor"):
            pass


def test_compile_flag_reaches_the_training_config(tmp_path):
    import run_all
    args = run_all.parser().parse_args(["--methods", "pgd_at", "--compile", "reduce-overhead"])
    cfg, overrides = run_all.config_from_args(args)
    assert expand_jobs(cfg, overrides)[0].train.compile == "reduce-overhead"


def _compiled_losses(name: str, mode: str, backend):
    """Three training steps of ``name`` on the small CNN, its forward compiled with ``mode``/``backend`` (None:
    plain): their losses, and dynamo's count of unique graphs after each step."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters
    from harness.config import TrainConfig
    from harness.train import compiled
    dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    method = get_method(name)(TrainConfig(train_attack="pgd2"), 8 / 255)
    model = method.build_model("small_cnn", _small()).train()
    out, graphs = [], []
    with compiled(model, mode if backend else "off", torch.device("cpu"), backend=backend):
        for i in range(3):
            g = torch.Generator().manual_seed(i)
            x, y = torch.rand(12, 3, 16, 16, generator=g), torch.randint(0, 10, (12,), generator=g)
            loss, _, _ = method.train_step(model, x, y)
            loss.backward()
            out.append(loss.item())
            graphs.append(counters["stats"]["unique_graphs"])
    dynamo.reset()
    return out, graphs


def _small():
    from harness.data import DatasetInfo
    return DatasetInfo("c", 10, 3, 16, (0.5,) * 3, (0.25,) * 3, 8 / 255, 2, True)


@pytest.mark.parametrize("name, graphs_expected", [("pgd_at", 2), ("fast_at", 2), ("oat", 3), ("float", 3), ("floats", 3),
                                        ("smart", 3), ("oats", 9)])
def test_compiled_training_step_settles_on_few_graphs(name, graphs_expected):
    """What ``--compile`` costs in compilations: dynamo and AOTAutograd (no inductor, so no compiler is
    needed here) capture each method's training step in at most three graphs (train and eval mode; the
    conditioned methods also one per row split of the dual BN; OATS three per width), none more after the
    first step, and the compiled step computes the very losses of the plain one (FLOAT's noise included).
    The attack's compiled backward computes no weight gradient: a compiled backward returns every
    trainable input's gradient, whatever ``autograd.grad`` asked for, unless the weights are frozen."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from harness.config import TrainConfig
    weight_grads = []  # per compiled backward graph: its convolutions that compute a weight gradient

    def backward_compiler(gm, _):
        conv_bw = [n for n in gm.graph.nodes if n.target is torch.ops.aten.convolution_backward.default]
        weight_grads.append(sum(bool(n.args[-1][1]) for n in conv_bw))
        return make_boxed_func(gm.forward)

    aot = aot_autograd(fw_compiler=lambda gm, _: make_boxed_func(gm.forward), bw_compiler=backward_compiler)
    eager, _ = _compiled_losses(name, "off", None)
    out, graphs = _compiled_losses(name, "default", aot)
    assert graphs[0] == graphs_expected and graphs[-1] == graphs[0], graphs  # oats: all nine, none left uncompiled
    assert out == pytest.approx(eager, rel=1e-5)
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in get_method(name)(TrainConfig(), 8 / 255)
                 .build_model("small_cnn", _small()).modules())
    # the training pass's graphs compute every convolution's weight gradient (SMART's two-path ones twice),
    # the attack's none
    assert 0 in weight_grads and all(w >= n_conv for w in weight_grads if w), weight_grads


@pytest.mark.parametrize("name", ["oat", "float"])
def test_cudagraphs_mode_traces_the_conditioned_steps(name):
    """``--compile cudagraphs`` (torch.compile's cudagraphs backend, no inductor) takes the conditioned
    methods' steps whole: the same three graphs as any backend, the plain step's losses. On the CPU the
    backend runs AOTAutograd's graphs without recording CUDA graphs, so this checks the tracing, not the
    replay (tests/test_gpu.py runs it on CUDA)."""
    eager, _ = _compiled_losses(name, "off", None)
    out, graphs = _compiled_losses(name, "cudagraphs", "cudagraphs")
    assert graphs == [3, 3, 3]
    assert out == pytest.approx(eager, rel=1e-5)


def test_no_training_step_waits_for_the_device():
    """A training step never reads a tensor's value on the host (``.item()``, ``int(t)``, ``if t:``): on a GPU
    that would stall the step until every queued kernel had run. OAT's sampler used to, twice a step."""
    from harness.bench import count_ops
    from methods import method_names
    for name in method_names():
        ops = count_ops(name, "small_cnn", torch.device("cpu"))
        assert sum(ops.values()) > 50
        syncs = {op: n for op, n in ops.items() if op in ("_local_scalar_dense", "nonzero", "equal", "is_nonzero")}
        assert not syncs, f"{name}: {syncs}"


def _stop_scoring_after(monkeypatch, n: int):
    """Evaluation stops (KeyboardInterrupt, as a preemption) when it would score its (n+1)-th lambda;
    returns the list of lambdas scored so far and the real scoring function."""
    from harness import evaluate
    real, scored = evaluate._score_lambda, []

    def stop(method, model, forward, lam, *rest):
        if len(scored) == n:
            raise KeyboardInterrupt
        scored.append(lam)
        return real(method, model, forward, lam, *rest)

    monkeypatch.setattr(evaluate, "_score_lambda", stop)
    return scored, real


def test_a_stopped_evaluation_resumes_at_the_lambda_it_was_scoring(tmp_path, monkeypatch):
    """Evaluation stopped after three of FLOAT's eleven lambdas (say the job was preempted): the rerun scores
    only the other eight, and every lambda's figures equal those of an evaluation never stopped. A later
    evaluation over another lambda grid scores only its new lambdas; other settings score everything again."""
    import run_all
    from harness import evaluate
    args = ["--methods", "float", "--epochs", "1", "--subset", "128", "--eval-n", "40", "--aa", "off",
            "--checks", "off", "--complexity", "off", "--no-report", "--no-progress"]
    scored, real = _stop_scoring_after(monkeypatch, 3)
    assert run_all.main(args + ["--out", str(tmp_path / "a")]) == 130  # interrupted
    job = tmp_path / "a" / "smoke" / "float-digits-small_cnn-s0"
    assert len(list((job / "lambdas").glob("*.json"))) == 3 and not (job / "rows.csv").exists()
    scored.clear()
    monkeypatch.setattr(evaluate, "_score_lambda", lambda *a: scored.append(a[3]) or real(*a))
    assert run_all.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert scored == [i / 10 for i in range(3, 11)], "only the lambdas not scored before"
    assert len(list((job / "lambdas").glob("*.json"))) == 11, "every scored lambda's rows are kept"
    assert run_all.main(args + ["--out", str(tmp_path / "b")]) == 0  # the same job, never stopped
    resumed, whole = (pd.read_csv(tmp_path / d / "smoke" / "results.csv").dropna(subset=["lambda"]) for d in "ab")
    key = ["lambda", "metric", "attack"]
    pd.testing.assert_frame_equal(resumed.sort_values(key)[key + ["value"]].reset_index(drop=True),
                                  whole.sort_values(key)[key + ["value"]].reset_index(drop=True))
    scored.clear()
    assert run_all.main(args + ["--out", str(tmp_path / "a"), "--lambdas", "0,0.05,0.5,1"]) == 0
    assert scored == [0.05], "a finer grid scores only the lambdas it adds"
    table = pd.read_csv(tmp_path / "a" / "smoke" / "results.csv")
    finer = table.dropna(subset=["lambda"])
    assert sorted(finer["lambda"].unique()) == [0, 0.05, 0.5, 1]
    took = sum(json.loads((job / "lambdas" / f"model-lambda{lam!r}.json").read_text())["seconds"]
               for lam in (0.0, 0.05, 0.5, 1.0))
    assert table.loc[table.metric == "eval_time_s", "value"].item() >= took, "reused lambdas count as they took"
    scored.clear()
    assert run_all.main(args + ["--out", str(tmp_path / "a"), "--lambdas", "0,0.05,0.5,1", "--eval-n", "30"]) == 0
    assert scored == [0, 0.05, 0.5, 1], "rows scored under other settings are not reused"


def test_lambda_rows_are_reused_only_for_the_very_same_weights(tmp_path, monkeypatch):
    """The corrupt-checkpoint error says to delete the checkpoint; the job then trains again. Rows scored on
    the old model are reused only if the new training gave the very same weights (here: the CPU's
    deterministic retraining); a model with other weights (here: its checkpoint edited) is scored anew at
    every lambda, so no results table mixes two models."""
    import run_all
    from harness import evaluate
    from harness.store import load_checkpoint, save_checkpoint
    args = ["--methods", "float", "--epochs", "1", "--subset", "128", "--eval-n", "20", "--lambdas", "0,0.5,1",
            "--aa", "off", "--checks", "off", "--complexity", "off", "--no-report", "--no-progress",
            "--out", str(tmp_path)]
    scored, real = _stop_scoring_after(monkeypatch, 2)
    assert run_all.main(args) == 130
    job = tmp_path / "smoke" / "float-digits-small_cnn-s0"
    (job / "checkpoint.pt").unlink()
    scored.clear()
    monkeypatch.setattr(evaluate, "_score_lambda", lambda *a: scored.append(a[3]) or real(*a))
    assert run_all.main(args) == 0
    assert scored == [1.0], "trained again to the same weights: the two lambdas scored before are reused"
    state = load_checkpoint(job / "checkpoint.pt")
    conv = next(k for k in state["model"] if k.endswith("weight") and state["model"][k].dim() == 4)
    state["model"][conv][0].mul_(-1)
    save_checkpoint(job / "checkpoint.pt", state)
    for done in ("rows.csv", "eval.json"):
        (job / done).unlink()
    scored.clear()
    assert run_all.main(args) == 0
    assert scored == [0.0, 0.5, 1.0], "other weights: every lambda is scored again"


def test_lambda_rows_are_given_back_only_under_the_same_settings_device_and_lambda(tmp_path):
    from harness.store import LambdaRows
    settings = {"n": 40, "seed": 0, "device": "cpu", "torch": "2.14.1"}
    LambdaRows(tmp_path, settings).put("", 0.3, [{"metric": "clean_acc", "value": 0.9}], 2.5)
    again = LambdaRows(tmp_path, settings)
    assert again.get("", 0.3) == [{"metric": "clean_acc", "value": 0.9}] and again.reused_s == 2.5
    assert LambdaRows(tmp_path, settings | {"device": "NVIDIA H100 80GB HBM3"}).get("", 0.3) is None
    assert LambdaRows(tmp_path, settings | {"n": 30}).get("", 0.3) is None
    assert again.get("", 0.3000001) is None and again.get("w0.5", 0.3) is None
    (tmp_path / "model-lambda0.3.json").write_text('{"settings": ')  # a write cut short
    assert again.get("", 0.3) is None


def test_the_bench_runs_compiled_on_the_cpu_with_a_named_backend(capsys):
    """``python -m harness.bench --backend eager`` compiles the loop's forward on any device and says so."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters
    from harness import bench
    dynamo.reset()
    counters.clear()
    args = ["--methods", "pgd_at", "--arch", "small_cnn", "--batch-size", "4", "--iters", "2", "--attack", "pgd1",
            "--compile", "default", "--backend", "eager", "--device", "cpu"]
    try:
        assert bench.main(args) == 0
        assert counters["stats"]["unique_graphs"] == 2  # the attack's graph and the training pass's
    finally:
        dynamo.reset()
    assert "compile=default/eager" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--backend", "eager"])  # nothing to compile
    assert "--backend needs --compile" in capsys.readouterr().err
