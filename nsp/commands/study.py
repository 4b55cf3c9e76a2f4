"""``nsp study {run,worker,show,apply}``: Optuna studies over noise / pseudo-label parameters."""

from __future__ import annotations

import argparse

HELP = (
    "Hyper-parameter studies (Optuna): run workers, show the best trials, apply one to params.yaml."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="study_command", metavar="ACTION", required=True)
    r = sub.add_parser("run", help="create/resume a study and run K worker processes")
    r.add_argument("spec", help="study spec, e.g. studies/noise.yaml")
    r.add_argument("--n-trials", type=int, help="finished trials wanted (default: spec n_trials)")
    r.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    r.add_argument("--timeout", type=float, help="seconds before workers stop starting trials")
    r.add_argument(
        "--seed-offset",
        type=int,
        default=0,
        help="added to worker indices (sampler seeds); give each machine its own in distributed runs",
    )
    r.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    w = sub.add_parser("worker", help="one worker process (started by `nsp study run`)")
    w.add_argument("spec")
    w.add_argument("--params", default="params.yaml")
    w.add_argument("--n-trials", type=int)
    w.add_argument("--worker-index", type=int, default=0)
    w.add_argument("--threads", type=int, help="torch threads for this worker")
    w.add_argument("--deadline", type=float, help="unix time after which no trial starts")
    s = sub.add_parser("show", help="best trial(s) or the Pareto front as a table")
    s.add_argument("name", help="study name")
    s.add_argument("--spec", help="study spec (default: the studies/*.yaml with that name)")
    s.add_argument("--top", type=int, default=5, help="completed trials listed (single objective)")
    a = sub.add_parser("apply", help="write a trial's parameters into params.yaml")
    a.add_argument("name", help="study name")
    a.add_argument("--trial", type=int, required=True, help="trial number (see nsp study show)")
    a.add_argument("--spec", help="study spec (default: the studies/*.yaml with that name)")
    a.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")


def run(args: argparse.Namespace) -> int:
    from nsp.config import load_params

    if args.study_command == "show":
        from nsp.study import show_study

        print(show_study(args.name, spec_path=args.spec, top=args.top), end="")
        return 0
    if args.study_command == "apply":
        from nsp.study import apply_trial

        changes = apply_trial(
            args.name, trial_number=args.trial, params_path=args.params, spec_path=args.spec
        )
        for key, old, new in changes:
            same = " (unchanged)" if old == new else ""
            print(f"{args.params}: {key}: {old!r} -> {new!r}{same}")
        print(f"applied trial {args.trial} of study {args.name}; run `dvc repro` to reproduce it")
        return 0
    from nsp.study import load_spec, run_study, run_worker, show_study

    spec = load_spec(args.spec)
    params = load_params(args.params)
    if args.study_command == "worker":
        counts = run_worker(
            spec,
            params,
            n_trials=args.n_trials,
            worker_index=args.worker_index,
            deadline=args.deadline,
            threads=args.threads,
        )
        print(f"[study w{args.worker_index}] done: {counts['done']} trials finished", flush=True)
        return 0
    if args.workers < 1:
        from nsp.errors import NSPError

        raise NSPError(f"--workers must be >= 1 (got {args.workers})")
    counts = run_study(
        spec,
        params,
        params_path=args.params,
        n_trials=args.n_trials,
        workers=args.workers,
        timeout=args.timeout,
        seed_offset=args.seed_offset,
    )
    print(show_study(spec.name, spec_path=args.spec), end="")
    return 1 if counts["worker_errors"] else 0
