#!/usr/bin/env python3
"""Runs one cspbill period as shards on a Dask `distributed` cluster (issue 20).

    python cspbill_dask.py --scheduler tcp://HOST:8786 --config /srv/cspbill/cspbill.toml --period 2025-06

Phases, each the `cspbill` binary run with subprocess:
  1. `cspbill shard plan` here, on the client: it hashes the period's Partner Center files and uploads them to the
     warehouse, so the inputs need to be on this machine only (workers read them back from the warehouse), and
     the number of map shards must be known here anyway to build the task graph.
  2. one `cspbill shard map --file N` task per input file (pure=False, retried);
  3. with buckets (`[run] buckets` > 1, as the plan says): one `shard stage` task after the maps, then one
     `shard reduce --bucket K` task per bucket (the per-invoice detail, FOCUS rows and files of its customers);
  4. one `cspbill shard commit` task that depends on every map (or reduce) task: the one atomic commit;
  5. `cspbill shard clean` here, after a successful commit (unless --keep-shards): the plan's work files go.
The warehouse (`[warehouse]` in the config, or --warehouse) is the only shared state; every command is idempotent
and safe to run twice at once, so Dask may retry or re-run any task (a killed worker's task is rescheduled).

Exit codes of a task: 2 (bad usage, config or input) is never worth retrying: the task returns a failure value
that stops the run; 1 or death by a signal raises, so Dask retries a map (--retries). The commit is not retried on
exit 1 (--commit-retries 0): its exit 1 is an invariant the data violates or another run holding the period, and
running the whole period again cannot change either; a commit whose worker dies is still run again elsewhere by
the scheduler. This script prints the commit's stdout and exits with its code: 0 published, 1 failed, 2 bad input.
Every task's stderr goes, line by line, to its worker's log (logger `distributed.worker.cspbill`).

Needs Python 3 with `distributed` on the client and the workers, and the binary, the config and the reference
files it names at the same paths on every worker. See deploy/README.md.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
from collections import deque

from distributed import Client, as_completed, wait


def run_cspbill(label, cmd):
    """Runs one cspbill command on a worker.

    Returns {"ok": True, "stdout": ...} on exit 0 and {"ok": False, "code": 2, ...} on exit 2 (not retried);
    raises on exit 1 or a signal, so that Dask retries the task.
    """
    log = logging.getLogger("distributed.worker.cspbill")
    log.info("[%s] starting: %s", label, " ".join(cmd))
    tail = deque(maxlen=40)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as e:  # no binary at that path on this worker: a deployment error, retrying will not help
        return {"ok": False, "code": 2, "label": label, "stderr": f"cannot start {cmd[0]!r}: {e}"}

    def pump():
        for line in proc.stderr:
            line = line.rstrip("\n")
            tail.append(line)
            log.info("[%s] %s", label, line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    stdout = proc.stdout.read()
    code = proc.wait()
    reader.join()
    log.info("[%s] exited %s", label, code)
    stderr = "\n".join(tail)
    if code == 0:
        return {"ok": True, "label": label, "stdout": stdout}
    if code == 2:
        return {"ok": False, "code": 2, "label": label, "stderr": stderr}
    what = f"was killed by signal {-code}" if code < 0 else f"exited {code}"
    raise RuntimeError(f"cspbill {label} {what}:\n{stderr}")


def run_after(before, label, cmd):
    """A task that starts once every task in `before` has finished (its arguments are their results); when one of
    them failed for good (exit 2), it does not run and passes that failure on."""
    failed = [m for m in before if not m["ok"]]
    if failed:
        return failed[0]
    return run_cspbill(label, cmd)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scheduler", required=True, help="the Dask scheduler, tcp://HOST:PORT")
    ap.add_argument("--config", required=True, help="cspbill.toml, at the same path on this machine and every worker")
    ap.add_argument("--period", required=True, help="YYYY-MM")
    ap.add_argument("--warehouse", help="warehouse URL overriding the config's [warehouse] url")
    ap.add_argument("--mode", choices=["nightly", "close"])
    ap.add_argument("--invoice-date", help="YYYY-MM-DD")
    ap.add_argument("--cspbill", default="cspbill", help="the binary, same path on every worker (default: on PATH)")
    ap.add_argument("--retries", type=int, default=3, help="retries of a map task that exits 1 or is killed")
    ap.add_argument("--commit-retries", type=int, default=0,
                    help="retries of the commit when it exits 1 (default 0: an invariant failure or a lock held by "
                         "another run is not cured by running the period again; a dead worker's commit is rerun anyway)")
    ap.add_argument("--commit-resources", metavar="NAME=N[,NAME=N]",
                    help="Dask resources the commit task needs, e.g. `big=1` to run it only on workers started with "
                         "`dask worker --resources big=1`: the commit runs the whole month after the parse on one machine")
    ap.add_argument("--keep-shards", action="store_true",
                    help="keep the plan's work files (_shards/<plan_id>/) after a successful commit; by default "
                         "they are deleted (`cspbill shard clean`), as every night's new inputs make a new plan")
    a = ap.parse_args(argv)

    try:
        commit_resources = resources(a.commit_resources)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    # Absolute, as every worker opens the same path (their working folders differ).
    common = ["--config", os.path.abspath(a.config)] + (["--warehouse", a.warehouse] if a.warehouse else [])

    # 1. Plan, here: the inputs are on this machine.
    plan_cmd = [a.cspbill, "shard", "plan", *common, "--period", a.period]
    try:
        planned = subprocess.run(plan_cmd, stdout=subprocess.PIPE, text=True)
    except OSError as e:
        print(f"error: cannot start {a.cspbill!r}: {e}", file=sys.stderr)
        return 2
    if planned.returncode != 0:
        print(f"error: `{' '.join(plan_cmd)}` exited {planned.returncode}", file=sys.stderr)
        return planned.returncode if planned.returncode in (1, 2) else 1
    lines = [ln for ln in planned.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        print(f"error: `{' '.join(plan_cmd)}` printed no plan:\n{planned.stdout}", file=sys.stderr)
        return 1
    plan = json.loads(lines[-1])
    plan_id, files, buckets = plan["plan_id"], int(plan["files"]), int(plan.get("buckets", 1))
    print(f"plan {plan_id}: {files} map shard(s), {buckets} bucket(s)", file=sys.stderr)

    # 2. One map task per input file; 3. the commit, depending on all of them.
    with Client(a.scheduler) as client:
        missing = lacking(client, commit_resources)
        if missing:
            print(f"error: no worker of {a.scheduler} has the resources {missing} the commit needs (--commit-resources): "
                  f"start one with `dask worker --resources ...`", file=sys.stderr)
            return 2
        map_cmd = [a.cspbill, "shard", "map", *common, "--plan", plan_id, "--file"]
        maps = [client.submit(run_cspbill, f"map {n}", [*map_cmd, str(n)], pure=False, retries=a.retries)
                for n in range(files)]
        when = (["--mode", a.mode] if a.mode else []) + (["--invoice-date", a.invoice_date] if a.invoice_date else [])
        before_commit, work = maps, list(maps)
        if buckets > 1:
            # With buckets: the stage (the month up to its numbered invoices, once; as heavy as the commit, so on
            # the same resources and retried as it is), then one reduce per bucket of customers.
            stage = client.submit(run_after, maps, "stage", [a.cspbill, "shard", "stage", *common, "--plan", plan_id, *when],
                                  pure=False, retries=a.commit_retries, resources=commit_resources)
            reduce_cmd = [a.cspbill, "shard", "reduce", *common, "--plan", plan_id, "--bucket"]
            before_commit = [client.submit(run_after, [stage], f"reduce {k}", [*reduce_cmd, str(k)], pure=False,
                                           retries=a.retries) for k in range(buckets)]
            work += [stage, *before_commit]
        commit_cmd = [a.cspbill, "shard", "commit", *common, "--plan", plan_id, *when]
        commit = client.submit(run_after, before_commit, "commit", commit_cmd, pure=False, retries=a.commit_retries,
                               resources=commit_resources)
        # Stop at the first task that fails for good: no commit can follow it.
        for done in as_completed(work):
            code = failed(done)
            if code:
                client.cancel([*work, commit])
                return code
        wait([commit])
        code = failed(commit)
        if code:
            return code
        sys.stdout.write(commit.result()["stdout"])
    if not a.keep_shards:
        # The period is published; its plan's copy of the inputs and typed shards are no longer needed. A failure
        # here is a warning: the published period is unaffected.
        clean = subprocess.run([a.cspbill, "shard", "clean", *common, "--plan", plan_id], stdout=subprocess.PIPE, text=True)
        if clean.returncode != 0:
            print(f"warning: `cspbill shard clean --plan {plan_id}` exited {clean.returncode}; delete _shards/{plan_id}/ later",
                  file=sys.stderr)
    return 0


def resources(spec):
    """`big=1,ssd=1` → {"big": 1.0, "ssd": 1.0} (None for none); a malformed spec is a usage error."""
    if not spec:
        return None
    out = {}
    for item in spec.split(","):
        name, _, amount = item.partition("=")
        try:
            out[name.strip()] = float(amount)
        except ValueError:
            raise ValueError(f"--commit-resources `{spec}`: write NAME=N[,NAME=N], e.g. big=1") from None
        if not name.strip():
            raise ValueError(f"--commit-resources `{spec}`: a resource needs a name, e.g. big=1")
    return out


def lacking(client, needed):
    """The resources no worker of the cluster has enough of (a commit needing them would wait forever)."""
    if not needed:
        return {}
    workers = client.scheduler_info().get("workers", {}).values()
    return {k: v for k, v in needed.items() if not any(w.get("resources", {}).get(k, 0) >= v for w in workers)}


def failed(task):
    """Reports a task that failed for good and returns the exit code (None if it succeeded)."""
    if task.status == "error":  # still exiting 1 or killed after its retries
        print(f"error (still failing after its retries): {task.exception()}", file=sys.stderr)
        return 1
    if task.status != "finished":  # cancelled, e.g. by a scheduler restart
        print(f"error: a task was {task.status}", file=sys.stderr)
        return 1
    result = task.result()
    if not result["ok"]:
        print(f"error: cspbill {result['label']} exited {result['code']} (not retried):\n{result['stderr']}",
              file=sys.stderr)
        return result["code"]
    return None


if __name__ == "__main__":
    sys.exit(main())
