#!/usr/bin/env python
"""lambench: train and evaluate once-for-all adversarial training methods under one protocol.

  python run_all.py --methods pgd_at,fast_at                       # embedded digits, small CNN (preset smoke)
  python run_all.py --preset cifar10-fast --methods fast_at --data-root /data
  python run_all.py --preset paper --methods pgd_at --train-lambdas 0,0.1,0.2,0.3,0.4,1
  torchrun --nproc-per-node 8 run_all.py -- --preset paper --methods oat  # one job on 8 GPUs (DDP)
  python run_all.py --preset paper --methods oat,float --seeds 0,1,2 --executor slurm --slurm-partition gpu

Flags override the preset; the method's own defaults (e.g. Fast-AT's cyclic schedule) sit in between.
Rerunning the same command skips finished jobs and resumes unfinished ones from their last epoch.
Every run ends with <out>/<run>/report.html and report.pdf (python -m report <out>/<run> re-renders them).
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys

from harness.config import COMPILE_MODES, PRESETS, apply, check_lambda, from_preset, parse_fraction
from harness.errors import LambenchError


def _csv(kind=str):
    return lambda text: tuple(kind(t.strip()) for t in text.split(",") if t.strip())


def _option(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise LambenchError(f"--opt takes KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _lambdas(text):
    """Comma-separated lambdas, each a number or a range START:STOP:STEP (STOP included): 0:1:0.05."""
    values = []
    try:
        for part in (t.strip() for t in text.split(",")):
            if part.count(":") == 2:
                start, stop, step = map(float, part.split(":"))
                if not all(map(math.isfinite, (start, stop, step))) or step <= 0 or stop < start \
                        or (stop - start) / step > 1000:  # (λ live in [0, 1]; more than 1,000 is a typo)
                    raise ValueError
                count = int(round((stop - start) / step))
                values += [round(start + i * step, 10) for i in range(count + 1) if start + i * step <= stop + 1e-9]
            elif part:
                values.append(float(part))
    except (ValueError, OverflowError):
        raise LambenchError(f"cannot read {text!r}; write lambdas as e.g. 0,0.1,1 or a range 0:1:0.05 (at most "
                            f"1,000 steps)") from None
    return tuple(values)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors are one line too
        raise LambenchError(f"{message} (see python run_all.py --help)")


def parser() -> argparse.ArgumentParser:
    from harness.data import dataset_names
    from harness.models import model_names
    from methods import method_names
    p = _Parser(prog="run_all.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n\n")[1:]))
    a = p.add_argument
    a("--preset", default="smoke", choices=sorted(PRESETS),
      help="starting configuration: smoke (embedded digits, small CNN, ~1 min on CPU), cifar10-fast "
           "(PreActResNet18, short schedule, GPU), paper (ResNet34, 200 epochs, PGD-7). Default: smoke")
    a("--methods", type=_csv(), help=f"comma list of methods: {', '.join(method_names())}")
    a("--dataset", dest="datasets", type=_csv(), help=f"comma list of datasets: {', '.join(dataset_names())}")
    a("--arch", dest="archs", type=_csv(), help=f"comma list of architectures: {', '.join(model_names())}")
    a("--seeds", type=_csv(int), help="comma list of seeds, one job each (default 0)")
    a("--train-lambdas", type=_lambdas, help="pgd_at: train one dedicated model per lambda, e.g. 0,0.1,0.2,0.3,0.4,1")
    a("--eps", type=parse_fraction, help="L-inf budget, e.g. 8/255 (default: the dataset's: 8/255 CIFAR/SVHN, 0.1 Fashion-MNIST/digits)")
    a("--subset", type=int, help="train on the first N training examples only (quick runs)")
    a("--data-root", help="folder holding the datasets (default: $LAMBENCH_DATA)")
    a("--out", help="results folder (default: results)")
    a("--run", help="run name: results go to <out>/<run>/ (default: the preset name)")
    a("--device", help="auto (default: cuda if available), cpu, cuda, cuda:1, ...")
    a("--force", action="store_true", help="retrain jobs that already finished")
    a("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
    a("--no-report", dest="report", action="store_false", help="do not render report.html and report.pdf at the end")
    a("--clean-floor", type=float, help="report: also compare methods at the best robust accuracy with clean "
                                        "accuracy at least this (e.g. 0.8)")
    t = p.add_argument_group("training (override the preset and the method's defaults)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--schedule", choices=["cosine", "cyclic", "multistep"])
    t.add_argument("--train-attack", help="pgd7 (default), pgdK, or fgsm_rs")
    t.add_argument("--attack-step", type=parse_fraction, help="step of the training attack, e.g. 2/255")
    t.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="auto: bf16 on CUDA, fp32 on CPU")
    t.add_argument("--compile", choices=COMPILE_MODES,
                   help="CUDA only: compile the model's forward for training with torch.compile; reduce-overhead "
                        "adds CUDA graphs (the lever at small batches); cudagraphs: CUDA graphs without inductor "
                        "(traced in seconds, not compiled for minutes). Evaluation always runs the plain model")
    t.add_argument("--opt", dest="options", action="append", type=_option, metavar="KEY=VALUE",
                   help="method option, repeatable, e.g. --opt encoding=onehot (oat); see README")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval", type=_csv(), help="comma list of attacks: pgd20 (default), pgd50x10, pgdK[xR]")
    e.add_argument("--lambdas", type=_lambdas,
                   help="once-for-all methods: score at these lambdas instead of the method's grid, e.g. "
                        "0,0.5,1 or the range 0:1:0.05 (stop included); no retraining (oat needs --opt "
                        "encoding=scalar for lambdas it was not trained at; dedicated models such as pgd_at keep the lambda they were trained at)")
    e.add_argument("--eval-n", type=int, help="evaluate on the first N test examples (default: all)")
    e.add_argument("--eval-batch-size", type=int)
    e.add_argument("--aa", choices=["standard", "rand", "off"],
                   help="AutoAttack at every lambda: standard (default: APGD-CE, APGD-T, FAB-T, Square; the rand "
                        "version is taken automatically where the forward is random), rand (APGD-CE and APGD-DLR "
                        "with EOT 20, everywhere), off")
    e.add_argument("--aa-n", type=int, help="AutoAttack on the first N test examples (default 1000; smoke: 25)")
    e.add_argument("--checks", choices=["on", "off"],
                   help="sanity checks (extra attacks on a subset, flag rows, console warnings); default on")
    e.add_argument("--checks-n", type=int, help="the checks' extra attacks on the first N test examples "
                                                "(default 200; smoke: 100)")
    e.add_argument("--complexity", choices=["on", "off"],
                   help="parameters, MACs, latency, throughput and memory at every lambda; default on")
    x = p.add_argument_group("where jobs run (default: here, one after another; see README, Scale out)")
    x.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local",
                   help="local (default), slurm (each job a task of a Slurm job array, through submitit), "
                        "submitit-local (the same with local processes: a first try, and the tests)")
    x.add_argument("--slurm-partition", help="Slurm partition (default: the cluster's)")
    x.add_argument("--slurm-gpus-per-job", type=int,
                   help="GPUs per job, one process each, joined into one DDP job (0: CPU only). Default 1")
    x.add_argument("--slurm-time", type=int, help="time limit per job in minutes (default 1440)")
    x.add_argument("--slurm-array-parallelism", type=int, help="at most this many jobs at once (default 32)")
    x.add_argument("--slurm-cpus-per-task", type=int, help="CPU cores per process (default: the cluster's)")
    return p


TRAIN_FLAGS = ("epochs", "batch_size", "lr", "schedule", "train_attack", "attack_step", "precision", "compile", "options")
EVAL_FLAGS = {"eval": "attacks", "lambdas": "lambdas", "eval_n": "n", "eval_batch_size": "batch_size", "aa": "aa", "aa_n": "aa_n",
              "checks": "checks", "checks_n": "checks_n", "complexity": "complexity"}
ON_OFF = ("checks", "complexity")


def config_from_args(args):
    """Return (RunConfig, explicit training overrides)."""
    from harness.attacks import parse_attack
    from methods import get_method
    cfg = from_preset(args.preset)
    run_fields = {k: getattr(args, k) for k in ("methods", "datasets", "archs", "seeds", "train_lambdas", "eps",
                                               "subset", "data_root", "out", "run", "device", "progress")
                  if getattr(args, k) is not None}
    run_fields["force"] = args.force
    cfg = apply(cfg, run_fields)
    evals = {v: getattr(args, k) for k, v in EVAL_FLAGS.items() if getattr(args, k) is not None}
    evals.update({k: evals[k] == "on" for k in ON_OFF if k in evals})
    cfg = apply(cfg, {"eval": evals})
    overrides = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    if "options" in overrides:
        overrides["options"] = dict(overrides["options"])
    for name in cfg.methods:  # fail before any work starts
        get_method(name)
    for spec in cfg.eval.attacks + ((overrides["train_attack"],) if "train_attack" in overrides else ()):
        parse_attack(spec)
    for lam in (cfg.train_lambdas or ()) + (cfg.eval.lambdas or ()):
        check_lambda(lam)
    if cfg.eval.lambdas == ():
        raise LambenchError("--lambdas is empty; give lambdas such as 0,0.5,1")
    if cfg.eval.attacks == () and cfg.eval.aa == "off":  # (AutoAttack alone, --eval '' --aa standard, is fine)
        raise LambenchError("--eval is empty and --aa off: no attack would score robustness; give attacks such "
                            "as --eval pgd20, or --aa standard")
    if args.run is not None and (args.run in ("", ".", "..") or any(c in args.run for c in "/\\")):
        raise LambenchError(f"--run {args.run!r} is not a folder name; give a name such as smoke (results go to "
                            f"<out>/<run>/)")
    if args.clean_floor is not None and not 0 <= args.clean_floor <= 1:
        raise LambenchError(f"--clean-floor {args.clean_floor} is outside [0, 1]; give a fraction, e.g. 0.8")
    return cfg, overrides


SLURM_FLAGS = {"slurm_partition": "partition", "slurm_gpus_per_job": "gpus_per_job", "slurm_time": "time_min",
               "slurm_array_parallelism": "array_parallelism", "slurm_cpus_per_task": "cpus_per_task"}


def executor_from_args(args):
    from harness.executor import ExecutorConfig
    given = {field: getattr(args, flag) for flag, field in SLURM_FLAGS.items() if getattr(args, flag) is not None}
    return ExecutorConfig(kind=args.executor, **given)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


#: the --slurm-* flags that only Slurm uses (submitit-local takes the time, GPUs and CPUs per job)
SLURM_ONLY = ("slurm_partition", "slurm_array_parallelism")


def drop_unused(args, cfg, overrides: dict):
    """The flags given that this run will not use: each gets a note (instead of being dropped without a word)
    and its value is set back to the default, so that it neither enters the jobs' settings nor makes finished
    jobs look scored otherwise. Returns (cfg, overrides, notes)."""
    from harness.device import resolve_device
    from methods import get_method, method_names
    classes = [get_method(name) for name in cfg.methods]
    preset = from_preset(args.preset)
    notes, evals = {}, {}
    if args.train_lambdas is not None and not any(c.train_lambdas is not None for c in classes):
        per = [n for n in method_names() if get_method(n).train_lambdas is not None]
        notes["--train-lambdas"] = f"it sets the λ of methods that train one model per λ ({', '.join(per)}), " \
                                   f"and this run has none"
        cfg = apply(cfg, {"train_lambdas": None})
    if args.lambdas is not None and not any(c.once_for_all for c in classes):
        notes["--lambdas"] = "it sets where once-for-all methods are scored, and this run has none (a dedicated " \
                             "model is scored at the λ it was trained at: --train-lambdas)"
        evals["lambdas"] = None
    if args.compile not in (None, "off") and args.executor == "local" and resolve_device(cfg.device).type != "cuda":
        notes[f"--compile {args.compile}"] = "it applies on CUDA only, and this run trains on the CPU"
        overrides = {k: v for k, v in overrides.items() if k != "compile"}
    for flag in SLURM_FLAGS:
        if getattr(args, flag) is not None and (args.executor == "local" or args.executor == "submitit-local"
                                                 and flag in SLURM_ONLY):
            notes[_flag(flag)] = "it applies with --executor slurm" + (
                " or submitit-local" if flag not in SLURM_ONLY else "")
    if args.aa_n is not None and cfg.eval.aa == "off":
        notes["--aa-n"] = "--aa off runs no AutoAttack"
        evals["aa_n"] = preset.eval.aa_n
    if args.checks_n is not None and not cfg.eval.checks:
        notes["--checks-n"] = "--checks off runs no checks"
        evals["checks_n"] = preset.eval.checks_n
    if args.clean_floor is not None and not args.report:
        notes["--clean-floor"] = "--no-report renders no report (python -m report RUN_FOLDER --clean-floor X " \
                                 "renders one later)"
    return apply(cfg, {"eval": evals}), overrides, [f"note: {flag} ignored: {why}" for flag, why in notes.items()]


def _launcher() -> str:
    """How this process was started, as run.json and the report record the command: ``python run_all.py``,
    or under torchrun with its processes (``torchrun --nproc-per-node 2 run_all.py --``; its rendezvous
    flags are not visible here)."""
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if world == 1:
        return "python run_all.py"
    nodes = f"--nnodes {world // local} " if world != local and local and world % local == 0 else ""
    return f"torchrun {nodes}--nproc-per-node {local} run_all.py --"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # torchrun ... run_all.py -- ARGS (the -- keeps torchrun off --run; see README)
        argv = argv[1:]
    try:
        args = parser().parse_args(argv)
        from harness import distributed
        from harness.runner import run
        cfg, overrides = config_from_args(args)
        cfg, overrides, notes = drop_unused(args, cfg, overrides)
        if os.environ.get("RANK", "0") == "0":  # (torchrun: one process says it)
            print(*notes, sep="\n", end="\n" if notes else "")
        command = " ".join([_launcher(), *map(shlex.quote, argv)])
        run(cfg, overrides, command=command, executor=executor_from_args(args))
        if args.report and distributed.is_main():
            _report(cfg, args.clean_floor)
    except LambenchError as exc:
        print(f"lambench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lambench: interrupted; rerun the same command to resume (training from the last finished "
              "epoch, evaluation from the last finished lambda)", file=sys.stderr)
        return 130
    return 0


def _report(cfg, clean_floor) -> None:
    """Render the run's report from its results store (a failure here is one line; the results stay)."""
    from pathlib import Path
    run_dir = Path(cfg.out) / (cfg.run or "run")
    if not any(run_dir.glob("*/rows.csv")):
        return
    from report import render
    try:
        paths = render(run_dir, clean_floor=clean_floor)
    except Exception as exc:  # noqa: BLE001 - a report failure must not hide the run's own outcome
        print(f"lambench: the report could not be rendered ({type(exc).__name__}: {exc}); the results are in "
              f"{run_dir / 'results.csv'}; retry with python -m report {run_dir}", file=sys.stderr)
        return
    print("report: " + ", ".join(str(paths[k]) for k in ("html", "pdf") if k in paths))


if __name__ == "__main__":
    sys.exit(main())
