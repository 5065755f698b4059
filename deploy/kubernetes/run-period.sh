#!/usr/bin/env bash
# UNTESTED HERE (no Kubernetes cluster in CI): an example on paper; check it against your cluster before use.
# Runs one period as one Job per phase (plan, map; with buckets also stage and reduce; commit), waiting for each:
#
#   deploy/kubernetes/run-period.sh PERIOD IMAGE [nightly|close]
#
# Needs kubectl pointed at the namespace holding the ConfigMaps `cspbill-config` (cspbill.toml) and
# `cspbill-reference` (the reference CSVs), the Secret `cspbill-warehouse` (the object store's credentials as
# environment variables) and the PersistentVolumeClaim `cspbill-inputs` (inputs/PERIOD/, read by the plan Job only).
# Safe to run again after a failure: the plan is the same for the same inputs, a completed map Job of that plan is
# kept (its shards are done), a failed one must be deleted first (the message says so), the commit Job is new.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
period="$1" image="$2" mode="${3:-nightly}" plan_id="" files="" buckets=""

render() {
  sed -e "s|\${PERIOD}|$period|g" -e "s|\${IMAGE}|$image|g" -e "s|\${MODE}|$mode|g" \
      -e "s|\${PLAN_ID}|$plan_id|g" -e "s|\${FILES}|$files|g" -e "s|\${BUCKETS}|$buckets|g" "$here/$1"
}

# Waits until the Job is Complete (returns 0) or Failed (returns 1).
wait_job() {
  local state
  while :; do
    state="$(kubectl get job "$1" -o jsonpath='{.status.conditions[?(@.status=="True")].type}')"
    case " $state " in
      *" Complete "*) return 0 ;;
      *" Failed "*) echo "job $1 failed: kubectl logs -l job-name=$1 --tail=50; kubectl delete job $1 to run it anew" >&2
                    return 1 ;;
    esac
    sleep 10
  done
}

# 1. Plan (always anew: it is cheap, and the log read next must be this run's).
kubectl delete job "cspbill-plan-$period" --ignore-not-found --wait=true
render plan-job.yaml | kubectl apply -f -
wait_job "cspbill-plan-$period"
line="$(kubectl logs "job/cspbill-plan-$period" | grep '^{"plan_id"' | tail -n 1)"
plan_id="$(sed -E 's/.*"plan_id": *"([^"]+)".*/\1/' <<<"$line")"
files="$(sed -E 's/.*"files": *([0-9]+).*/\1/' <<<"$line")"
buckets="$(sed -nE 's/.*"buckets": *([0-9]+).*/\1/p' <<<"$line")"; buckets="${buckets:-1}"
echo "plan $plan_id: $files map shard(s), $buckets bucket(s)"

# 2. Map: one index per input file.
render map-job.yaml | kubectl apply -f -
wait_job "cspbill-map-$plan_id"

# 3, 4. With buckets: the stage, then one reduce per bucket.
if [[ "$buckets" -gt 1 ]]; then
  kubectl delete job "cspbill-stage-$plan_id" --ignore-not-found --wait=true
  render stage-job.yaml | kubectl apply -f -
  wait_job "cspbill-stage-$plan_id"
  render reduce-job.yaml | kubectl apply -f -
  wait_job "cspbill-reduce-$plan_id"
fi

# 5. Commit: exits 1 (publishing nothing) if a shard is missing or another run holds the period's lock.
kubectl delete job "cspbill-commit-$plan_id" --ignore-not-found --wait=true
render commit-job.yaml | kubectl apply -f -
if wait_job "cspbill-commit-$plan_id"; then
  kubectl logs "job/cspbill-commit-$plan_id" | grep '^published ' || true
else
  exit 1
fi
