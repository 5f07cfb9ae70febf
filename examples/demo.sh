#!/usr/bin/env bash
# `make demo`: the scheduler's dry run, then a whole mesh on this machine: seven volunteer nodes
# with simulated GPUs, a Probe job placed, run and audited through it, and the mesh stopped again.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export MESH_HOME="${MESH_HOME:-$PWD/.mesh-demo}"
PORT="${MESH_DEMO_PORT:-8000}"
CLUSTER=examples/clusters/volunteers-small.yaml

echo "== 1. Dry run: where the example queue would go on the example volunteer cluster"
$BIN/meshctl plan examples/jobs/queue-mixed.yaml --cluster "$CLUSTER"

echo "== 2. A mesh on this machine (home: $MESH_HOME)"
trap '$BIN/meshctl down' EXIT
$BIN/meshctl up --nodes "$CLUSTER" --port "$PORT"

echo "== 3. A Probe job: placed by the scheduler, pinned to its node, followed live"
$BIN/meshctl submit examples/jobs/probe.yaml --follow
$BIN/meshctl status bio-ml/probe-rtx-4090
$BIN/meshctl nodes

echo "== 4. The audit log, verified on this side"
$BIN/meshctl audit show --job bio-ml/probe-rtx-4090
$BIN/meshctl audit verify
