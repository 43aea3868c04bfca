"""Where one explanation job's CPU goes on the worker: a `gradient` job on a 21-token sentence (bench_latency's), run
by worker.runner.run_job in this process on the embedded default (SQLite, local objects), per faithfulness level.

    .venv/bin/python -m benchmarks.profile_job [-n 20] [--top 25] [--no-profile] [--levels full,basic,none]

Prints the worker CPU ms per job at each level (process time of run_job: the API's submit and the lease sidecar are
not counted), the levels taking turns job by job so that a busy machine weighs on each alike; then, with cProfile
on, the job split into stages (inclusive time of the functions that do each stage; nested ones overlap).
Each job explains a new sentence (job i: text i), so `full` pays its bound search as a new input does.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.bench_latency import LEVELS, job
from benchmarks.profile_submit import stage_times

STAGES: list[tuple[str, str, str]] = [
    ("run_job (whole job)", "worker/runner.py", "run_job"),
    ("claim (DB)", "service/jobs.py", "claim"),
    ("lease hold + release", "worker/runner.py", "start"),
    ("explain_job", "worker/runner.py", "explain_job"),
    ("  model ref (DB)", "worker/work.py", "model_ref"),
    ("  validate request", "worker/methods/request.py", "validate"),
    ("  engine _run", "worker/methods/__init__.py", "_run"),
    ("    encode", "worker/models/hf.py", "encode"),
    ("    method (gradient run)", "worker/methods/gradient.py", "run_batch"),
    ("    faithfulness_batch", "worker/methods/faithfulness.py", "faithfulness_batch"),
    ("      masked rows: drive", "worker/methods/masked_rows.py", "drive"),
    ("      masked rows: probabilities", "worker/methods/masked_rows.py", "probabilities"),
    ("      masked rows: forward passes", "worker/methods/masked_rows.py", "_run"),
    ("      bound search rows (greedy)", "worker/methods/aopc_bounds.py", "_greedy"),
    ("    attach (figure)", "worker/methods/__init__.py", "attach"),
    ("      token figure", "worker/render/tokens.py", "token_scores_png"),
    ("        PNG encode", "worker/render/raster.py", "png_bytes"),
    ("    provenance", "worker/methods/__init__.py", "provenance"),
    ("  safetensors", "worker/runner.py", "_safetensors"),
    ("  result.json", "json/__init__.py", "dumps"),
    ("  result.html", "worker/runner.py", "_result_page"),
    ("store_artifacts", "worker/runner.py", "store_artifacts"),
    ("  sha256", "service/storage.py", "sha256"),
    ("  object writes", "service/storage.py", "put"),
    ("finish (DB)", "service/jobs.py", "finish"),
    ("cancel checks (DB)", "worker/runner.py", "_cancel_requested"),
    ("observe_job (metrics)", "service/metrics.py", "observe_job"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20, help="jobs per level (default 20)")
    parser.add_argument("--top", type=int, default=25, help="entries in each top list (default 25)")
    parser.add_argument("--no-profile", action="store_true", help="only the CPU ms per job")
    parser.add_argument("--levels", default=",".join(LEVELS), help="faithfulness levels, comma-separated")
    parser.add_argument("--save", metavar="PATH", help="also write each level's cProfile stats to PATH.<level>")
    args = parser.parse_args()
    levels = args.levels.split(",")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        run, close = worker(Path(tmp))
        try:
            run(job(839))  # loads the model, warms the caches
            cpu: dict[str, list[float]] = {level: [] for level in levels}
            for i in range(args.n):
                for level in levels[i % len(levels):] + levels[:i % len(levels)]:
                    cpu[level].append(timed(run, job(i, level)))
            print(f"worker CPU per job, cProfile off ({args.n} jobs per level, in turn; load "
                  f"{open('/proc/loadavg').read().split()[0]}):")
            for level in levels:
                values = cpu[level]
                print(f"  {level:<6} median {statistics.median(values):7.1f} ms   min {min(values):7.1f} ms")
            if not args.no_profile:
                for level in levels:
                    profile(run, level, args.n, args.top, args.save)
        finally:
            close()
    return 0


def worker(tmp: Path) -> tuple[Callable[[dict], str], Callable[[], None]]:
    """run(request): submit through the API's test client, run the job with run_job here (CPU counted: run_job's
    only); returns the job's status."""
    from service.app import create_app
    from service.auth import create_key
    from service.migrate import upgrade
    from service.runtime import Runtime
    from tests.helpers import make_settings
    from worker.runner import run_job

    settings = make_settings(tmp, log_level="WARNING")
    settings.data_path.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    rt = Runtime(settings)
    with rt.db.session() as s:
        key = create_key(s, "profile")[1]
    client = create_app(runtime=rt).test_client()
    headers = {"Authorization": f"Bearer {key}"}

    def submit(body: dict) -> str:
        response = client.post("/v1/jobs", json=body, headers=headers)
        if response.status_code != 202:
            raise RuntimeError(f"submit answered {response.status_code}: {response.get_data(as_text=True)[:300]}")
        return str(response.get_json()["id"])

    def run(body: dict) -> str:
        status = run_job(rt, submit(body), "profile-worker")
        if status != "succeeded":
            raise RuntimeError(f"job ended {status}")
        return status

    run.submit = submit  # type: ignore[attr-defined]
    run.run_job = lambda job_id: run_job(rt, job_id, "profile-worker")  # type: ignore[attr-defined]
    return run, rt.close


def timed(run: Callable[[dict], str], body: dict) -> float:
    """Worker CPU ms of one job (the submit before it not counted)."""
    job_id = run.submit(body)  # type: ignore[attr-defined]
    c0 = time.process_time()
    status = run.run_job(job_id)  # type: ignore[attr-defined]
    ms = (time.process_time() - c0) * 1e3
    if status != "succeeded":
        raise RuntimeError(f"job ended {status}")
    return ms


def profile(run: Callable[[dict], str], level: str, n: int, top: int, save: str | None) -> None:
    ids = [run.submit(job(1000 + i, level)) for i in range(n)]  # type: ignore[attr-defined]
    profiler = cProfile.Profile(time.process_time)
    c0 = time.process_time()
    for job_id in ids:
        profiler.enable()
        run.run_job(job_id)  # type: ignore[attr-defined]
        profiler.disable()
    cpu = (time.process_time() - c0) * 1e3 / n
    stats = pstats.Stats(profiler)
    if save:
        stats.dump_stats(f"{save}.{level}")
    print(f"\n=== level {level}: cProfile on, {cpu:.1f} ms CPU per job; stages (inclusive ms per job):")
    for label, ms, calls in stage_times(stats, n, STAGES):
        print(f"  {label:<40} {ms:8.2f} ms   ({calls:g} calls/job)")
    if top:
        for key in ("cumulative", "tottime"):
            print(f"\ntop {top} by {key} ({level}):")
            stats.sort_stats(key).print_stats(top)


if __name__ == "__main__":
    raise SystemExit(main())
