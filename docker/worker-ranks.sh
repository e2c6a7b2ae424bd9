#!/usr/bin/env bash
# llmq-worker-ranks — run this pod's share of a tensor-parallel group that
# spans several pods (a LeaderWorkerSet group).
#
#   llmq-worker-ranks [llmq-worker arguments, with --tp N and --group G]
#
# Environment:
#   LWS_WORKER_INDEX    index of this pod in its group (set by LeaderWorkerSet)
#   LLMQ_RANKS_PER_POD  k: ranks (GPUs) in this pod
#   LLMQ_METRICS_PORT   port of /metrics and /readyz, served by the leader
#   LLMQ_METRICS_ADDR   the leader's --metrics-addr (the worker's default, 127.0.0.1, when unset)
#   LLMQ_WORKER_BIN     the worker executable (default llmq-worker)
#   POD_IP              the leader pod's address, where the peers of other pods
#                       reach rank 0 (--tp-addr; default: the host name)
#   LLMQ_TP_PORT        rank 0's TCP port for its peers (--tp-port, default 29500)
#
# Starts k processes `llmq-worker ARGS --rank R` with R = LWS_WORKER_INDEX*k+i
# and CUDA_VISIBLE_DEVICES=i (each rank sees only its own GPU, as device 0).
# Global rank 0, in the group's leader pod, is the leader: it consumes the
# queue, serves --metrics-port and publishes the group's rendezvous in Redis;
# the other ranks are peers that run the steps it broadcasts.
#
# Signals: SIGTERM goes to the leader only. It drains (finishes in-flight
# jobs, stops pulling) and then stops its peers; a peer killed first would
# fail the group's collectives and cut the drain short. Pods without the
# leader ignore SIGTERM and end when the group ends (or at the grace period).
#
# A group cannot run with a rank missing: the first rank to exit on its own
# ends the others and the pod exits non-zero; LeaderWorkerSet then recreates
# the whole group.
set -uo pipefail

prog=llmq-worker-ranks
k=${LLMQ_RANKS_PER_POD:-}
idx=${LWS_WORKER_INDEX:-}
port=${LLMQ_METRICS_PORT:-9090}
tp_port=${LLMQ_TP_PORT:-29500}
worker=${LLMQ_WORKER_BIN:-llmq-worker}

[[ "$k" =~ ^[1-9][0-9]*$ ]] || { echo "$prog: LLMQ_RANKS_PER_POD must be a positive integer (got '$k')" >&2; exit 2; }
[[ "$idx" =~ ^[0-9]+$ ]] || { echo "$prog: LWS_WORKER_INDEX must be set by LeaderWorkerSet (got '$idx')" >&2; exit 2; }
[[ "$port" =~ ^[0-9]+$ ]] || { echo "$prog: bad LLMQ_METRICS_PORT '$port'" >&2; exit 2; }
[[ "$tp_port" =~ ^[0-9]+$ ]] || { echo "$prog: bad LLMQ_TP_PORT '$tp_port'" >&2; exit 2; }

base=$((idx * k))
pids=()
leader_pid=""
stopping=0

on_term() {
    stopping=1
    if [ -n "$leader_pid" ]; then
        echo "$prog: SIGTERM: the leader drains, then stops its peers"
        kill -s TERM "$leader_pid" 2>/dev/null
    else
        echo "$prog: SIGTERM: peer ranks run until the group's leader stops them"
    fi
}
trap on_term TERM INT

for ((i = 0; i < k; i++)); do
    rank=$((base + i))
    extra=()
    if [ "$rank" -eq 0 ]; then
        [ -n "${POD_IP:-}" ] && extra=(--tp-addr "$POD_IP")
        extra+=(--tp-port "$tp_port" --metrics-port "$port")
        [ -n "${LLMQ_METRICS_ADDR:-}" ] && extra+=(--metrics-addr "$LLMQ_METRICS_ADDR")
    fi
    echo "$prog: starting rank $rank (GPU $i of this pod's $k)"
    CUDA_VISIBLE_DEVICES=$i "$worker" "$@" --rank "$rank" "${extra[@]}" &
    pids+=($!)
    if [ "$rank" -eq 0 ]; then leader_pid=$!; fi
done

# Wait for the first rank to end; a trapped signal interrupts the wait, so
# loop until a rank really ended.
while :; do
    wait -n
    first=$?
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
    [ "$alive" -lt "${#pids[@]}" ] && break
done

rc=$first
if [ "$stopping" -eq 0 ]; then
    echo "$prog: a rank exited with status $first; ending the other ranks of this pod" >&2
    [ "$rc" -eq 0 ] && rc=1 # a group never ends on its own: still a failure
elif [ "$rc" -eq 143 ]; then
    rc=0
fi
# The group is over once one rank is gone: end the rest.
for p in "${pids[@]}"; do kill -s TERM "$p" 2>/dev/null; done

# Collect every rank; the worst status is the pod's (143 = stopped by us).
for p in "${pids[@]}"; do
    while :; do
        wait "$p"
        s=$?
        if [ "$s" -gt 128 ] && kill -0 "$p" 2>/dev/null; then continue; fi
        break
    done
    [ "$s" -eq 127 ] && continue # already collected by wait -n
    [ "$s" -eq 143 ] && continue
    [ "$s" -gt "$rc" ] && rc=$s
done
exit "$rc"
