"""Paper scale, measured (issue 27): sharding, loading and starting to train at 1M-24M resumes.

    python benchmarks/paper_scale.py [--people 1000000 4000000 24000000] [--parts shard loader
        startup s3] [--num-cpus 2] [--work DIR] [--keep] [--s3-people 2000000] [--s3-runs 2]
        [--startup-people 20000] [--startup-runs 1]

For each corpus size, `career shard --format synth --sim-preset resumes --people N` runs as a
subprocess to a local folder under `--work` while a sampler reads, every `--interval` seconds,
the memory of the whole process tree (the `career` driver and every descendant: Ray's GCS,
raylet, agents and workers): resident memory (RSS) and proportional memory (PSS, which splits
pages shared between processes among them), and /dev/shm, where Ray's object store lives.
Reported: wall time, people/s, bytes on disk (total and per job-year), peak RSS of the driver, of
the largest Ray worker and summed over the tree, peak PSS of the tree, the object store's peak
(the pages written in the raylet's plasma file in /dev/shm),
the tree's total (anonymous and file PSS + object store: each page once), the bytes Ray
spilled to disk and the CPU seconds of the tree (user + system, summed over its processes: less
sensitive than wall time to other work on the machine).

Then, on the same corpus:

* `loader`: one pass of `CareerLoader` (one DataLoader worker, default batching) over the train
  split in a subprocess, job-years/s and the tree's memory over time (it must stay flat);
* `startup`: `career pretrain --preset paper --updates 20 --stop-after 1` (local Ray, 2 workers):
  the time from the command's start to the first update's checkpoint (`checkpoints/step0000001/
  complete.json`), for a small corpus (`--startup-people`) and each big one: it must not grow
  with the corpus;
* `s3`: a `--s3-people` corpus sharded to, and streamed from, moto's S3 server on 127.0.0.1 and
  a local folder, runs alternating: the S3/local ratios of the medians.

Corpora stay in `--work` between parts (and runs, with `--keep`): a part finds a corpus already
sharded there and reuses it. Results merge into benchmarks/results/paper_scale.json (a part rerun
replaces only its own figures), with a plot in benchmarks/results/paper_scale.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, save  # noqa: E402

CAREER = str(Path(sys.executable).with_name("career"))
PARTS = ("shard", "loader", "startup", "s3")
NAME = "paper_scale"
MB = 2**20


# ----------------------------------------------------------------------------- memory sampling
def _is_ray_worker(process: psutil.Process) -> bool:
    """A Ray task or actor process (not the GCS, raylet or Ray's agents): titled `ray::`."""
    try:
        name = process.name()
        title = " ".join(process.cmdline()[:1])
    except psutil.Error:
        return False
    return (name.startswith("ray::") or title.startswith("ray::")) and "Agent" not in title


def _pss(pid: int) -> tuple[int, int]:
    """(PSS, PSS of its anonymous and file pages) of a process in bytes, from smaps_rollup: one
    small read that the kernel sums (psutil's memory_full_info walks the whole smaps). The second
    leaves out shared memory (Ray's object store), counted once, from /dev/shm, instead."""
    pss = private = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                key, _, rest = line.partition(":")
                if key == "Pss":
                    pss = int(rest.split()[0]) * 1024
                elif key in ("Pss_Anon", "Pss_File"):
                    private += int(rest.split()[0]) * 1024
    except OSError:
        pass
    return pss, private


def plasma_bytes(raylet: int) -> int:
    """Bytes allocated in this Ray instance's object store: the raylet's (deleted) /dev/shm
    plasma files, by their allocated blocks (pages actually written, not the reserved size)."""
    total = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{raylet}/fd"):
            with contextlib.suppress(OSError):
                if "plasma" in os.readlink(f"/proc/{raylet}/fd/{fd}"):
                    total += os.stat(f"/proc/{raylet}/fd/{fd}").st_blocks * 512
    return total


def _spill_dir(raylet: psutil.Process) -> Path | None:
    """This Ray instance's session folder (spilled objects go below it)."""
    try:
        for part in raylet.cmdline():
            if part.startswith("--session_dir="):
                return Path(part.split("=", 1)[1])
    except psutil.Error:
        pass
    return None


def _spilled_bytes(session: Path | None) -> int:
    """Bytes of spilled objects under a Ray session folder."""
    if session is None or not session.exists():
        return 0
    total = 0
    for root, _dirs, files in os.walk(session):
        if "spill" not in root:
            continue
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


@dataclass
class TreeMemory:
    """Peaks (and a time series) of the memory of one process and all its descendants.

    `tree_total` is what the tree holds, each page once: the processes' anonymous and file pages
    (PSS: shared pages split among the processes mapping them) plus the object store's shared
    memory (the raylet's plasma file in /dev/shm, its pages written). The tree's RSS sum counts shared
    pages once per process, and its PSS sum misses object-store pages no live process maps."""

    root: int
    interval: float = 0.5
    driver_rss: int = 0
    worker_rss: int = 0  # the largest single Ray worker process
    tree_rss: int = 0
    tree_pss: int = 0
    object_store: int = 0  # the raylet's plasma file(s) in /dev/shm
    tree_total: int = 0
    spilled: int = 0
    cpu_seconds: dict[int, float] = field(default_factory=dict)  # pid -> user + system, last seen
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (s, RSS, total)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> TreeMemory:
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        session: Path | None = None
        ticks = 0
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.root)
                processes = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            rss_total = pss_total = private_total = store = 0
            for process in processes:
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                pss, private = _pss(process.pid)
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    self.cpu_seconds[process.pid] = times.user + times.system
                rss_total += rss
                pss_total += pss or rss
                private_total += private or rss
                if process.pid == self.root:
                    self.driver_rss = max(self.driver_rss, rss)
                elif _is_ray_worker(process):
                    self.worker_rss = max(self.worker_rss, rss)
                with contextlib.suppress(psutil.Error):
                    if process.name() == "raylet":
                        store += plasma_bytes(process.pid)
                        session = session or _spill_dir(process)
            total = private_total + store
            self.tree_rss = max(self.tree_rss, rss_total)
            self.tree_pss = max(self.tree_pss, pss_total)
            self.object_store = max(self.object_store, store)
            self.tree_total = max(self.tree_total, total)
            self.samples.append((round(time.perf_counter() - self._start, 2), rss_total, total))
            ticks += 1
            if session is not None and ticks % 10 == 0:  # a walk: every ~5 s is enough
                self.spilled = max(self.spilled, _spilled_bytes(session))
            self._stop.wait(self.interval)

    def peaks_mb(self) -> dict[str, float]:
        return {
            "driver_rss_mb": round(self.driver_rss / MB),
            "largest_worker_rss_mb": round(self.worker_rss / MB),
            "tree_rss_mb": round(self.tree_rss / MB),
            "tree_pss_mb": round(self.tree_pss / MB),
            "object_store_shm_mb": round(self.object_store / MB),
            "tree_total_mb": round(self.tree_total / MB),
            "spilled_mb_at_least": round(self.spilled / MB),
            "tree_cpu_seconds": round(sum(self.cpu_seconds.values()), 1),
        }

    def flatness(self) -> dict[str, float]:
        """Peak tree total over the second and the last quarter of the run: equal when memory
        is flat (the first quarter is the process starting: imports, first shard)."""
        if len(self.samples) < 8:
            return {}
        quarter = len(self.samples) // 4
        second = max(s[2] for s in self.samples[quarter : 2 * quarter])
        last = max(s[2] for s in self.samples[-quarter:])
        return {
            "second_quarter_total_mb": round(second / MB),
            "last_quarter_total_mb": round(last / MB),
        }

    def series(self, points: int = 40) -> list[list[float]]:
        """About `points` samples, evenly spaced: (seconds, tree RSS MB, tree total MB)."""
        step = max(1, len(self.samples) // points)
        return [[t, round(r / MB), round(p / MB)] for t, r, p in self.samples[::step]]


def run_measured(command: list[str], log: Path, interval: float) -> tuple[float, TreeMemory]:
    """Run `command` (output to `log`) while sampling its process tree; its wall time and memory.

    On any failure (or Ctrl-C) every process of the tree is killed, by PID: no orphan Ray."""
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        memory = TreeMemory(process.pid, interval)
        try:
            with memory:
                returncode = process.wait()
        except BaseException:
            kill_tree(process.pid)
            raise
    wall = time.perf_counter() - start
    if returncode != 0:
        kill_tree(process.pid)
        raise SystemExit(
            f"{' '.join(command[:2])} failed ({returncode}):\n{log.read_text()[-3000:]}"
        )
    return wall, memory


def kill_tree(pid: int) -> None:
    """Kill a process and every descendant of it (only those: another Ray may be running here)."""
    try:
        root = psutil.Process(pid)
        processes = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=10)


# ----------------------------------------------------------------------------- the parts
def shard_command(people: int, out: str, name: str, num_cpus: int, options: dict | None) -> list:
    command = [
        CAREER,
        "shard",
        "--format",
        "synth",
        "--sim-preset",
        "resumes",
        "--people",
        str(people),
        "--out",
        out,
        "--name",
        name,
        "--num-cpus",
        str(num_cpus),
    ]
    if options:
        command += ["--storage-options", json.dumps(options)]
    return command


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def shard_part(people: int, work: Path, args) -> dict:
    """Shard N people to a local folder, measured; a corpus already there is kept (and its earlier
    figures are not repeated)."""
    out = work / f"local-{people}"
    if (out / "resumes" / "manifest.json").exists():
        print(f"[{people:,}] shard: corpus already in {out}, not resharded")
        return {}
    shutil.rmtree(out, ignore_errors=True)
    log = work / f"shard-{people}.log"
    wall, memory = run_measured(
        shard_command(people, str(out), "resumes", args.num_cpus, None), log, args.interval
    )
    manifest = json.loads((out / "resumes" / "manifest.json").read_text())
    tokens = manifest["totals"]["tokens"]
    on_disk = folder_bytes(out / "resumes")
    result = {
        "wall_seconds": round(wall, 1),
        "people_per_second": round(people / wall),
        "tokens": tokens,
        "shards": manifest["totals"]["shards"],
        "bytes_on_disk": on_disk,
        "bytes_per_token_on_disk": round(on_disk / tokens, 3),
        "bytes_per_token_shards": manifest["extra"]["bytes_per_token"],
        **memory.peaks_mb(),
        "memory_series_s_rss_total_mb": memory.series(),
    }
    print(
        f"[{people:,}] shard: {wall:.1f} s, {people / wall:,.0f} people/s, {on_disk / MB:.0f} MB "
        f"({on_disk / tokens:.2f} B/job-year); peaks: driver {result['driver_rss_mb']} MB, worker "
        f"{result['largest_worker_rss_mb']} MB, tree RSS {result['tree_rss_mb']} MB / PSS "
        f"{result['tree_pss_mb']} MB / total {result['tree_total_mb']} MB, object store "
        f"{result['object_store_shm_mb']} MB, "
        f"spilled >= {result['spilled_mb_at_least']} MB; CPU {result['tree_cpu_seconds']} s",
        flush=True,
    )
    return result


def loader_pass(url: str, options: dict | None, work: Path, tag: str, args) -> dict:
    """One pass of the train split through `CareerLoader` in a subprocess, its memory sampled."""
    report = work / f"loader-{tag}.json"
    command = [sys.executable, __file__, "--loader-pass", url, "--report", str(report)]
    if options:
        command += ["--storage-options", json.dumps(options)]
    # A pass takes seconds at 1M people: sample more often to see its memory over time.
    wall, memory = run_measured(command, work / f"loader-{tag}.log", args.interval / 5)
    measured = json.loads(report.read_text())
    result = {
        **measured,
        "tokens_per_second": round(measured["tokens"] / measured["seconds"]),
        "process_wall_seconds": round(wall, 1),
        "tree_rss_mb": round(memory.tree_rss / MB),
        "tree_pss_mb": round(memory.tree_pss / MB),
        "tree_total_mb": round(memory.tree_total / MB),
        **memory.flatness(),
        "memory_series_s_rss_total_mb": memory.series(),
    }
    print(
        f"[{tag}] loader: {measured['tokens']:,} job-years in {measured['seconds']:.1f} s = "
        f"{result['tokens_per_second']:,}/s; tree total peak {result['tree_total_mb']} MB "
        f"(2nd/last quarter {result.get('second_quarter_total_mb')}/"
        f"{result.get('last_quarter_total_mb')} MB)",
        flush=True,
    )
    return result


def one_loader_pass(url: str, options: dict | None, report: Path) -> None:
    """The child of `loader_pass`: what benchmarks/loader_throughput.py times, once."""
    from data_shards.stream import CareerLoader, StreamConfig

    loader = CareerLoader(
        url, StreamConfig(split="train", loop=False), num_workers=1, storage_options=options
    )
    start = time.perf_counter()
    tokens = sum(int(batch["lengths"].sum()) for batch in loader)
    seconds = time.perf_counter() - start
    report.write_text(
        json.dumps(
            {"tokens": tokens, "seconds": round(seconds, 2), "padding": loader.padding_share}
        )
    )


def startup_part(data: Path, work: Path, tag: str, args) -> dict:
    """`career pretrain --preset paper` from the command's start to its first update's
    checkpoint (`--stop-after 1`: the run checkpoints after update 1 and leaves), the median of
    `--startup-runs` runs."""
    runs = []
    for _ in range(args.startup_runs):
        out = work / f"pretrain-{tag}"
        shutil.rmtree(out, ignore_errors=True)
        command = [
            CAREER,
            "pretrain",
            "--data",
            str(data),
            "--out",
            str(out),
            "--preset",
            "paper",
            "--updates",
            "20",
            "--stop-after",
            "1",
            "--num-cpus",
            str(args.num_cpus),
        ]
        start = time.time()
        wall, memory = run_measured(command, work / f"pretrain-{tag}.log", args.interval)
        record = out / "checkpoints" / "step0000001" / "complete.json"
        runs.append((record.stat().st_mtime - start, wall, memory))
        shutil.rmtree(out, ignore_errors=True)
    first_update = statistics.median(r[0] for r in runs)
    result = {
        "to_first_update_checkpoint_seconds": round(first_update, 1),
        "runs_to_first_update_seconds": [round(r[0], 1) for r in runs],
        "command_wall_seconds": round(statistics.median(r[1] for r in runs), 1),
        "tree_total_mb": round(max(r[2].tree_total for r in runs) / MB),
        "largest_worker_rss_mb": round(max(r[2].worker_rss for r in runs) / MB),
        # CPU seconds of the whole command (start-up, one update, checkpoint, shutdown): what
        # the start-up costs whatever else runs on the machine.
        "runs_tree_cpu_seconds": [round(sum(r[2].cpu_seconds.values()), 1) for r in runs],
    }
    print(
        f"[{tag}] pretrain start-up: first update checkpointed at {first_update:.1f} s (median of "
        f"{result['runs_to_first_update_seconds']}); tree total peak {result['tree_total_mb']} MB"
        f"; CPU seconds {result['runs_tree_cpu_seconds']}",
        flush=True,
    )
    return result


def ensure_local(people: int, work: Path, args) -> Path:
    """The local corpus of N people (sharded unmeasured if the shard part did not make it)."""
    data = work / f"local-{people}" / "resumes"
    if not (data / "manifest.json").exists():
        print(f"[{people:,}] sharding the corpus first (not measured here)", flush=True)
        run_measured(
            shard_command(people, str(data.parent), "resumes", args.num_cpus, None),
            work / f"shard-{people}.log",
            args.interval,
        )
    return data


def s3_part(work: Path, args) -> dict:
    """The same corpus sharded to and streamed from a local folder and moto's S3 server: runs
    alternate (local, S3, local, ...) so that both see the same machine load; medians of
    `--s3-runs` shard runs and 3 loader passes each."""
    from _s3 import local_s3

    people = args.s3_people
    local_out = work / f"s3cmp-local-{people}"
    walls: dict[str, list[float]] = {"local": [], "s3": []}
    rates: dict[str, list[int]] = {"local": [], "s3": []}
    with local_s3("bench") as options:
        for run in range(args.s3_runs):
            shutil.rmtree(local_out, ignore_errors=True)
            wall, _ = run_measured(
                shard_command(people, str(local_out), "resumes", args.num_cpus, None),
                work / "s3cmp-shard-local.log",
                args.interval,
            )
            walls["local"].append(wall)
            wall, _ = run_measured(
                shard_command(people, "s3://bench/datasets", f"r{run}", args.num_cpus, options),
                work / "s3cmp-shard-s3.log",
                args.interval,
            )
            walls["s3"].append(wall)
        for _ in range(3):
            local = loader_pass(str(local_out / "resumes"), None, work, "s3cmp-local", args)
            rates["local"].append(local["tokens_per_second"])
            remote = loader_pass("s3://bench/datasets/r0", options, work, "s3cmp-s3", args)
            rates["s3"].append(remote["tokens_per_second"])
    shutil.rmtree(local_out, ignore_errors=True)
    shard = {where: statistics.median(times) for where, times in walls.items()}
    loader = {where: statistics.median(r) for where, r in rates.items()}
    result = {
        "people": people,
        "shard_local_seconds": [round(t, 1) for t in walls["local"]],
        "shard_s3_seconds": [round(t, 1) for t in walls["s3"]],
        "shard_s3_over_local": round(shard["s3"] / shard["local"], 3),
        "loader_local_tokens_per_second": rates["local"],
        "loader_s3_tokens_per_second": rates["s3"],
        "loader_local_over_s3": round(loader["local"] / loader["s3"], 3),
    }
    print(
        f"[s3 {people:,}] shard median {shard['local']:.1f} s local vs {shard['s3']:.1f} s S3 "
        f"(x{result['shard_s3_over_local']}); loader median {loader['local']:,.0f} vs "
        f"{loader['s3']:,.0f} job-years/s (local/S3 x{result['loader_local_over_s3']})",
        flush=True,
    )
    return result


# ----------------------------------------------------------------------------- results
def previous_results() -> dict:
    path = RESULTS / f"{NAME}.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("results", {})


def plot(results: dict) -> Path | None:
    """Wall time and peak memory of sharding against the corpus size."""
    rows = sorted((int(n), r) for n, r in results.get("corpora", {}).items() if "shard" in r)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    people = [n / 1e6 for n, _ in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(people, [r["shard"]["wall_seconds"] / 60 for _, r in rows], "o-", label="shard")
    cpu = [(n / 1e6, r["shard"]["tree_cpu_seconds"] / 120) for n, r in rows]
    left.plot(*zip(*cpu, strict=True), "^:", label="shard: CPU time / 2 cores")
    loader = [(n / 1e6, r["loader"]["process_wall_seconds"] / 60) for n, r in rows if "loader" in r]
    if loader:
        left.plot(*zip(*loader, strict=True), "s--", label="loader pass (train split)")
    left.set(xlabel="people (millions)", ylabel="minutes", title="time")
    left.legend(fontsize=8)
    for key, label, style in (
        ("tree_total_mb", "tree total (PSS + object store)", "o-"),
        ("object_store_shm_mb", "object store (plasma)", "v-"),
        ("driver_rss_mb", "driver RSS", "s-"),
        ("largest_worker_rss_mb", "largest worker RSS (incl. mapped store)", "d-"),
        ("tree_rss_mb", "RSS summed (shared pages once per process)", "x:"),
    ):
        right.plot(people, [r["shard"][key] / 1024 for _, r in rows], style, label=label)
    right.axhline(6, color="grey", linewidth=0.8, linestyle="--")
    right.set(xlabel="people (millions)", ylabel="peak memory (GiB)", title="sharding memory")
    right.legend(fontsize=7)
    figure.suptitle("career shard --format synth, 2 CPUs")
    figure.tight_layout()
    path = RESULTS / f"{NAME}.png"
    RESULTS.mkdir(exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, nargs="+", default=[1_000_000, 4_000_000, 24_000_000])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--work", type=Path, help="where corpora are kept (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep --work at the end")
    parser.add_argument("--s3-people", type=int, default=2_000_000)
    parser.add_argument("--s3-runs", type=int, default=2, help="shard runs per target")
    parser.add_argument("--startup-people", type=int, default=20_000)
    parser.add_argument("--startup-runs", type=int, default=1, help="pretrain start-ups per corpus")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--loader-pass", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--storage-options", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loader_pass:  # the child process of one loader pass
        options = json.loads(args.storage_options) if args.storage_options else None
        one_loader_pass(args.loader_pass, options, args.report)
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="paper-scale-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}\nwork folder: {work}", flush=True)
    results = previous_results()
    corpora = results.setdefault("corpora", {})
    try:
        if "startup" in args.parts:
            small = ensure_local(args.startup_people, work, args)
            results["startup_small"] = {
                "people": args.startup_people,
                **startup_part(small, work, str(args.startup_people), args),
            }
        for people in args.people:
            entry = corpora.setdefault(str(people), {})
            if "shard" in args.parts:
                measured = shard_part(people, work, args)
                if measured:
                    entry["shard"] = measured
            data = ensure_local(people, work, args)
            if "loader" in args.parts:
                entry["loader"] = loader_pass(str(data), None, work, str(people), args)
            if "startup" in args.parts:
                entry["startup"] = startup_part(data, work, str(people), args)
            save(NAME, {"num_cpus": args.num_cpus, "results": results})  # after every corpus
        if "s3" in args.parts:
            results["s3"] = s3_part(work, args)
    finally:
        path = save(NAME, {"num_cpus": args.num_cpus, "results": results})
        figure = plot(results)
        print(f"wrote {path}" + (f" and {figure}" if figure else ""))
        if args.keep:
            print(f"corpora kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
