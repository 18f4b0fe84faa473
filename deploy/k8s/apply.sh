#!/bin/sh
# dejavu pipeline --scheduler k8s: applies the steps' Indexed Jobs in order, each after the one it needs completed
# (Kubernetes Jobs have no dependencies of their own). Needs kubectl and the PersistentVolumeClaim {{pvc}}.
set -eu
cd "$(dirname "$0")"
run() { kubectl apply -f "$1.yaml" && kubectl wait --for=condition=complete "job/dejavu-$1" --timeout=24h; }
kubectl apply -f collect-calibration.yaml
run collect-heldout
kubectl wait --for=condition=complete job/dejavu-collect-calibration --timeout=24h
run merge-calibration
run merge-heldout
run train
run merge-predictors
run finish
