#!/usr/bin/env python3
"""Sharded runs on a local Dask cluster against S3 (moto): the checks of issue 20.

    $CSPBILL_PYTHON tests/shard_cluster_check.py --cspbill BIN --workspace DIR --period 2025-06 \
        --s3 http://127.0.0.1:PORT [--case NAME ...]

DIR is a copy of a workspace (cspbill.toml, inputs/, reference/, like sample_data/); this script writes its
configs there (one per warehouse prefix, removed at the end). The bucket `cspbill-test` must exist on the server.
It starts a Dask scheduler and two workers (nanny + worker, one thread each) on 127.0.0.1 as separate process
groups and always stops them. The truth every sharded run is held to is a single-machine `cspbill run` of the same
workspace into its own prefix: the published files (every `outputs` entry of the committed manifest, read back
from the store and hashed here) must be the same paths with the same SHA-256.

Cases (default: all, in this order):
  identical      the driver (deploy/dask/cspbill_dask.py) on the cluster == the single run; more than 20 outputs;
                 the commit, given `--commit-resources big=1`, runs on the worker that has that resource; the
                 plan's work files are cleaned
  worker_killed  a wrapper binary holds `shard map --file 0` for a few seconds on its first attempt; the Dask
                 worker process running it (the wrapper's parent, checked to be a worker's pid) is killed with
                 SIGKILL; the run still completes, == the single run, and file 0 was started at least twice
  concurrent     plan, `shard map --file 0` twice at once, the other files, commit == the single run
  buckets        `[run] buckets = 3`: plan, maps, a stage, three reduces, commit == `cspbill run` with that config
  retries        a wrapper fails map 0's first attempt and the commit with exit 1: the map is retried, the commit is
                 not (the driver exits 1), nothing is published
  missing_shard  plan, map all files but the last, commit: exit 1 naming the last shard and no other, and nothing
                 published on the store (no commit pointer, manifest, raw landing or table); then map it and commit == the
                 single run
In the last two, map and commit run on a copy of the workspace without inputs/ (as on a worker: the inputs are
only on the planner, which uploads them with the plan).
Prints `ok CASE SECONDS` per case; exits 1 at the first failure with the reason (and the cluster's log tails).
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
from pathlib import Path

import boto3
from distributed import Client

BUCKET = "cspbill-test"
ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "deploy" / "dask" / "cspbill_dask.py"
TIMEOUT = 900  # seconds for one cspbill command or one driver run: a hang fails the check instead of blocking CI


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=TIMEOUT, **kw)


def describe(cmd, p):
    return f"`{' '.join(map(str, cmd))}` exited {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr[-4000:]}"


# ---------------------------------------------------------------------------------------------- the cluster

class Cluster:
    """A scheduler and two workers, each its own process group (a worker's group holds its nanny, the worker
    process and whatever the tasks started), stopped by group at the end."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []  # (name, Popen, log path)
        self.client = None

    def spawn(self, name, args):
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as out:
            p = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 cwd=self.tmp, start_new_session=True)
        self.procs.append((name, p, log))

    def start(self):
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self.spawn("scheduler", ["-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                                 "--no-dashboard"])
        for i in (1, 2):
            # Worker 2 is the large machine the commit is pinned to (`--commit-resources big=1` in `identical`).
            big = ["--resources", "big=1"] if i == 2 else []
            self.spawn(f"worker{i}", ["-m", "distributed.cli.dask_worker", self.address, "--host", "127.0.0.1",
                                      "--nthreads", "1", "--no-dashboard", "--name", f"w{i}", *big,
                                      "--local-directory", str(self.tmp / f"w{i}"), "--death-timeout", "60"])
        deadline = time.monotonic() + 120
        while self.client is None:
            try:
                self.client = Client(self.address, timeout=5)
            except OSError:
                check(time.monotonic() < deadline, f"the Dask scheduler did not start\n{self.tails()}")
                check(all(p.poll() is None for _, p, _ in self.procs), f"a cluster process exited\n{self.tails()}")
                time.sleep(0.5)
        self.client.wait_for_workers(2, timeout=120)

    def log(self, name):
        """A cluster process's log so far."""
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def worker_pids(self):
        return set(self.client.run(os.getpid).values())

    def tails(self, n=25):
        out = []
        for name, _, log in self.procs:
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            out.append(f"--- {name} ({log}), last {n} lines\n" + "\n".join(lines[-n:]))
        return "\n".join(out)

    def stop(self):
        if self.client is not None:
            try:
                self.client.close(timeout=10)
            except Exception:
                pass
        for _, p, _ in reversed(self.procs):
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    continue
                # The leader is gone; the rest of its group (an orphaned task process) goes too.
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break


# ---------------------------------------------------------------------------------------------- the store

class Store:
    def __init__(self, endpoint, run_prefix):
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                               aws_access_key_id="test", aws_secret_access_key="test")
        self.run_prefix = run_prefix

    def keys(self, prefix):
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
            out += [o["Key"][len(prefix) + 1:] for o in page.get("Contents", [])]
        return out

    def get(self, key):
        return self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


class Workspace:
    """The workspace copy and its configs: one per warehouse prefix, each pointing `[warehouse]` at S3."""

    def __init__(self, folder, endpoint, store):
        self.dir = Path(folder).resolve()
        self.endpoint = endpoint
        self.store = store
        self.base = (self.dir / "cspbill.toml").read_text()
        self.written = []

    def config(self, name, extra=""):
        prefix = f"{self.store.run_prefix}/{name}"
        kept, skip = [], False
        for line in self.base.splitlines():
            m = re.match(r"\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$", line)
            if m:
                skip = m.group(1) == "warehouse" or m.group(1).startswith("warehouse.")
            if not skip:
                kept.append(line)
        kept += ["", "[warehouse]", f'url = "s3://{BUCKET}/{prefix}"', "", "[warehouse.options]",
                 f'aws_endpoint_url = "{self.endpoint}"', 'aws_allow_http = "true"',
                 'aws_virtual_hosted_style_request = "false"', 'aws_region = "us-east-1"',
                 'aws_access_key_id = "test"', 'aws_secret_access_key = "test"', "", extra]
        path = self.dir / f"cspbill.{self.store.run_prefix.rsplit('/', 1)[-1]}.{name}.toml"
        path.write_text("\n".join(kept))
        check(tomllib.loads(path.read_text())["warehouse"]["url"] == f"s3://{BUCKET}/{prefix}", "config not as written")
        self.written.append(path)
        return path, prefix

    def cleanup(self):
        for p in self.written:
            p.unlink(missing_ok=True)


def manifest_path(stdout):
    """The manifest of the commit, from the `published ...; manifest PATH` line of `run` / `shard commit`."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("published ")]
    check(lines, f"no `published` line on stdout:\n{stdout}")
    m = re.search(r"manifest (\S+)\s*$", lines[-1])
    check(m, f"no manifest path in: {lines[-1]}")
    return m.group(1)


def published(store, prefix, stdout):
    """path -> SHA-256 of every output of the committed manifest, hashed from the published objects themselves."""
    mpath = manifest_path(stdout)
    manifest = json.loads(store.get(f"{prefix}/{mpath}"))
    out = {}
    for o in manifest["outputs"]:
        check(o["path"] not in out, f"{prefix}: {o['path']} twice in the manifest's outputs")
        h = hashlib.sha256(store.get(f"{prefix}/{o['path']}")).hexdigest()
        check(h == o["sha256"], f"{prefix}/{o['path']}: published bytes hash to {h}, the manifest says {o['sha256']}")
        out[o["path"]] = h
    return out


def same(truth, got, what):
    only_t = sorted(set(truth) - set(got))
    only_g = sorted(set(got) - set(truth))
    diff = sorted(p for p in set(truth) & set(got) if truth[p] != got[p])
    check(not (only_t or only_g or diff),
          f"{what} differs from the single run: {len(diff)} file(s) with other bytes {diff[:10]}, "
          f"{len(only_t)} missing {only_t[:10]}, {len(only_g)} extra {only_g[:10]}")


# ---------------------------------------------------------------------------------------------- the cases

class Checks:
    def __init__(self, args, tmp, ws, store, cluster):
        self.bin = str(Path(args.cspbill).resolve())
        self.tmp, self.ws, self.store, self.cluster = tmp, ws, store, cluster
        # A worker's workspace: the config and reference files, not the inputs (only the planner has them).
        shutil.copytree(ws.dir, tmp / "worker-ws", ignore=lambda d, names: [n for n in names if Path(d) == ws.dir
                                                                          and n in ("inputs", "warehouse")])
        self.worker_ws = Workspace(tmp / "worker-ws", ws.endpoint, store)
        self.period = args.period
        self._truth = None

    def truth(self):
        """The single-machine run, once: `cspbill run` into its own prefix."""
        if self._truth is None:
            cfg, prefix = self.ws.config("single")
            cmd = [self.bin, "run", "--config", cfg, "--period", self.period]
            p = run(cmd)
            check(p.returncode == 0, describe(cmd, p))
            self._truth = published(self.store, prefix, p.stdout)
        return self._truth

    def driver(self, cfg, binary=None):
        return [sys.executable, DRIVER, "--scheduler", self.cluster.address, "--config", cfg, "--period", self.period,
                "--cspbill", binary or self.bin, "--retries", "3"]

    def plan(self, cfg):
        cmd = [self.bin, "shard", "plan", "--config", cfg, "--period", self.period]
        p = run(cmd)
        check(p.returncode == 0, describe(cmd, p))
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        check(lines, f"no JSON line on the stdout of `shard plan`:\n{p.stdout}")
        plan = json.loads(lines[-1])
        check(plan.get("period") == self.period and int(plan.get("files", 0)) >= 2,
              f"`shard plan` printed {plan}: the checks need a period with at least 2 input files")
        return plan["plan_id"], int(plan["files"])

    def map(self, cfg, plan_id, n):
        return [self.bin, "shard", "map", "--config", cfg, "--plan", plan_id, "--file", str(n)]

    def commit(self, cfg, plan_id):
        return [self.bin, "shard", "commit", "--config", cfg, "--plan", plan_id]

    def case_identical(self):
        truth = self.truth()
        check(len(truth) > 20, f"the single run published {len(truth)} outputs; the check needs more than 20")
        cfg, prefix = self.ws.config("identical")
        commits_before = {name: self.cluster.log(name).count("[commit] starting") for name in ("worker1", "worker2")}
        cmd = self.driver(cfg) + ["--commit-resources", "big=1"]
        p = run(cmd)
        check(p.returncode == 0, describe(cmd, p))
        same(truth, published(self.store, prefix, p.stdout), "the sharded run")
        # The commit ran on the worker with the `big` resource, and only there.
        ran = {name: self.cluster.log(name).count("[commit] starting") - commits_before[name] for name in commits_before}
        check(ran == {"worker1": 0, "worker2": 1}, f"--commit-resources big=1: commits started per worker {ran}")
        # After the commit the driver deleted the plan's work files (`shard clean`); the published period stays.
        left = [k for k in self.store.keys(prefix) if k.startswith("_shards/")]
        check(not left, f"the driver left {len(left)} file(s) under _shards/: {left[:5]}")

    def case_worker_killed(self):
        truth = self.truth()
        cfg, prefix = self.ws.config("worker_killed")
        wdir = self.tmp / "wrapper"
        wdir.mkdir()
        attempts, marker = wdir / "attempts", wdir / "held"
        # The wrapper's parent is the process that ran it: the Dask worker (tasks call subprocess directly).
        wrapper = wdir / "cspbill"
        wrapper.write_text(f"""#!/bin/sh
case " $* " in
  *" shard map "*" --file 0 "*)
    echo "$$" >> '{attempts}'
    if mkdir '{marker}' 2>/dev/null; then
      echo "$PPID" > '{marker}/pid.tmp' && mv '{marker}/pid.tmp' '{marker}/pid'
      sleep 4
    fi ;;
esac
exec '{self.bin}' "$@"
""")
        wrapper.chmod(0o755)
        out, err = self.tmp / "killed.out", self.tmp / "killed.err"
        workers = self.cluster.worker_pids()  # asked before, to kill without delay while the wrapper holds map 0
        cmd = self.driver(cfg, str(wrapper)) + ["--keep-shards"]
        with open(out, "w") as o, open(err, "w") as e:
            d = subprocess.Popen([str(c) for c in cmd], stdout=o, stderr=e, text=True)
        try:
            deadline = time.monotonic() + 300
            while not (marker / "pid").exists():
                check(d.poll() is None, f"the driver exited {d.returncode} before map 0 started:\n{err.read_text()}")
                check(time.monotonic() < deadline, "map 0 did not start within 300 s")
                time.sleep(0.05)
            pid = int((marker / "pid").read_text())
            check(pid in workers, f"map 0's parent {pid} is not a Dask worker process {sorted(workers)}")
            os.kill(pid, signal.SIGKILL)
            d.wait(timeout=TIMEOUT)
        finally:
            if d.poll() is None:
                d.kill()
                d.wait()
        p = subprocess.CompletedProcess(cmd, d.returncode, out.read_text(), err.read_text())
        check(p.returncode == 0, describe(cmd, p))
        started = len(attempts.read_text().split())
        check(started >= 2, f"map 0 was started {started} time(s); the killed task should have run again")
        same(truth, published(self.store, prefix, p.stdout), "the run with a killed worker")
        # --keep-shards: the plan and every map's done.json are still there, and `shard status` says committed.
        keys = set(self.store.keys(prefix))
        plans = [k for k in keys if k.startswith("_shards/") and k.endswith("/plan.json")]
        check(len(plans) == 1, f"--keep-shards: expected one plan under _shards/, found {plans}")
        plan_id = plans[0].split("/")[1]
        st = run([self.bin, "shard", "status", "--config", cfg, "--plan", plan_id])
        check(st.returncode == 0, describe(["shard", "status"], st))
        status = json.loads(st.stdout.strip().splitlines()[-1])
        check(status["missing"] == [] and status["committed"] is True and status["ready_to_commit"] is True,
              f"`shard status` after the commit: {status}")

    def case_concurrent(self):
        truth = self.truth()
        cfg, prefix = self.ws.config("concurrent")
        plan_id, files = self.plan(cfg)
        wcfg, _ = self.worker_ws.config("concurrent")  # maps and commit run where the inputs are not
        cmd = self.map(wcfg, plan_id, 0)
        twins = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for t in twins:
            o, e = t.communicate(timeout=TIMEOUT)
            check(t.returncode == 0, describe(cmd, subprocess.CompletedProcess(cmd, t.returncode, o, e)))
        for cmd in [self.map(wcfg, plan_id, n) for n in range(1, files)] + [self.commit(wcfg, plan_id)]:
            p = run(cmd)
            check(p.returncode == 0, describe(cmd, p))
        same(truth, published(self.store, prefix, p.stdout), "the run with map 0 twice at once")

    def case_missing_shard(self):
        truth = self.truth()
        cfg, prefix = self.ws.config("missing_shard")
        plan_id, files = self.plan(cfg)
        wcfg, _ = self.worker_ws.config("missing_shard")
        last = files - 1
        for n in range(last):
            cmd = self.map(wcfg, plan_id, n)
            p = run(cmd)
            check(p.returncode == 0, describe(cmd, p))
        cmd = self.commit(wcfg, plan_id)
        p = run(cmd)
        check(p.returncode == 1, "commit with a shard missing: expected exit 1\n" + describe(cmd, p))
        # The refusal (its `error:` line, less the plan id and counts like `1 of 4`) names shard `last`, no other.
        said = " ".join(ln for ln in p.stderr.splitlines() if ln.startswith("error"))
        said = re.sub(r"\d+ of \d+", "", said.replace(plan_id, ""))
        named = {int(x) for x in re.findall(r"\b\d+\b", said)}
        check(named == {last}, f"commit's refusal should name the missing shard {last} and no other, "
                                f"names {sorted(named)}:\n{p.stderr}")
        keys = self.store.keys(prefix)
        public = [k for k in keys if k.startswith(("_commits/", "_runs/", "raw/", "staged/", "rejects/", "int/", "marts/"))]
        check(not public, f"a refused commit published {len(public)} object(s): {public[:10]}")
        check("published" not in p.stdout, f"a refused commit printed: {p.stdout}")
        # Supplying the missing shard makes the same plan commit.
        for cmd in (self.map(wcfg, plan_id, last), self.commit(wcfg, plan_id)):
            p = run(cmd)
            check(p.returncode == 0, describe(cmd, p))
        same(truth, published(self.store, prefix, p.stdout), "the run committed after its missing shard was mapped")

    def case_retries(self):
        """A map that exits 1 is retried; a commit that exits 1 is not (an invariant or a held lock is not cured by
        running the period again): a wrapper fails map 0's first attempt and every commit with exit 1."""
        cfg, prefix = self.ws.config("retries")
        wdir = self.tmp / "retry-wrapper"
        wdir.mkdir()
        maps, commits = wdir / "maps", wdir / "commits"
        wrapper = wdir / "cspbill"
        wrapper.write_text(f"""#!/bin/sh
case " $* " in
  *" shard map "*" --file 0 "*)
    echo x >> '{maps}'
    [ "$(wc -l < '{maps}')" -ge 2 ] || {{ echo "error: a store error, for the test" >&2; exit 1; }} ;;
  *" shard commit "*)
    echo x >> '{commits}'
    echo "error: an invariant, for the test" >&2; exit 1 ;;
esac
exec '{self.bin}' "$@"
""")
        wrapper.chmod(0o755)
        cmd = self.driver(cfg, str(wrapper))
        p = run(cmd)
        check(p.returncode == 1, "a commit exiting 1: the driver should exit 1\n" + describe(cmd, p))
        n_maps, n_commits = len(maps.read_text().split()), len(commits.read_text().split())
        check(n_maps == 2, f"map 0 failed once with exit 1 and should have run twice, ran {n_maps} time(s)")
        check(n_commits == 1, f"a commit exiting 1 should not be retried, it ran {n_commits} time(s)")
        public = [k for k in self.store.keys(prefix) if k.startswith(("_commits/", "_runs/", "marts/"))]
        check(not public, f"nothing should be published: {public[:5]}")
        # A commit needing a resource no worker has would wait forever: the driver refuses at once, exit 2.
        cmd = self.driver(cfg) + ["--commit-resources", "gpu=1"]
        p = run(cmd)
        check(p.returncode == 2 and "no worker" in p.stderr, "--commit-resources gpu=1: expected exit 2\n" + describe(cmd, p))

    def case_buckets(self):
        """`[run] buckets = 3`: the driver runs a stage and three reduces between the maps and the commit; the result
        equals a single-machine `cspbill run` with the same config, and the reduces ran on both workers' share."""
        extra = "[run]\nbuckets = 3\n"
        cfg1, prefix1 = self.ws.config("buckets_single", extra)
        cmd = [self.bin, "run", "--config", cfg1, "--period", self.period]
        p = run(cmd)
        check(p.returncode == 0, describe(cmd, p))
        truth = published(self.store, prefix1, p.stdout)
        cfg, prefix = self.ws.config("buckets", extra)
        started = lambda n: len(re.findall(r"\[reduce \d+\] starting", self.cluster.log(n)))
        before = {n: started(n) for n in ("worker1", "worker2")}
        cmd = self.driver(cfg)
        p = run(cmd)
        check(p.returncode == 0, describe(cmd, p))
        same(truth, published(self.store, prefix, p.stdout), "the bucketed sharded run")
        reduces = sum(started(n) - before[n] for n in before)
        check(reduces >= 3, f"expected the 3 reduce tasks to start, the worker logs show {reduces}")
        stages = sum(self.cluster.log(n).count("[stage] starting") for n in before)
        check(stages >= 1, "no stage task ran")


CASES = ["identical", "worker_killed", "concurrent", "missing_shard", "retries", "buckets"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cspbill", required=True)
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--period", required=True)
    ap.add_argument("--s3", required=True, help="the S3 endpoint, http://127.0.0.1:PORT")
    ap.add_argument("--case", action="append", choices=CASES, help="run only these (repeatable)")
    args = ap.parse_args()
    # SIGTERM (a test runner's timeout) unwinds like Ctrl-C, so the cluster is stopped.
    def interrupted(*_):
        raise KeyboardInterrupt("SIGTERM")
    signal.signal(signal.SIGTERM, interrupted)
    os.environ.pop("CSPBILL_WAREHOUSE", None)  # it would override every config's [warehouse] url (here and on workers)

    run_prefix = f"shard-check-{os.getpid()}-{time.time_ns()}"
    store = Store(args.s3.rstrip("/"), run_prefix)
    with tempfile.TemporaryDirectory(prefix="cspbill-shard-") as t:
        tmp = Path(t)
        ws = Workspace(args.workspace, args.s3, store)
        cluster = Cluster(tmp)
        case = "cluster start"
        try:
            cluster.start()
            checks = Checks(args, tmp, ws, store, cluster)
            case, t0 = "single run (the truth)", time.monotonic()
            checks.truth()
            print(f"single run: {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
            for case in args.case or CASES:
                t0 = time.monotonic()
                getattr(checks, f"case_{case}")()
                print(f"ok {case} {time.monotonic() - t0:.1f}", flush=True)
        except Exception as e:  # a failed check, a timeout, or a store or cluster error: all fail the case
            why = str(e) if isinstance(e, Fail) else "".join(traceback.format_exception(e))
            print(f"FAIL {case}: {why}\n{cluster.tails()}", file=sys.stderr, flush=True)
            return 1
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the cleanup short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            cluster.stop()
            ws.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
