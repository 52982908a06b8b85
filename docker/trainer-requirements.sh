#!/bin/sh
# The trainer images' pins: requirements.txt minus Airflow and its providers (steps never import
# Airflow). `gpu` swaps tensorflow-cpu for tensorflow[and-cuda] of the same version (its wheels bring
# CUDA and cuDNN). One place for this rule: the Dockerfiles and docker/build.sh (wheelhouse) use it.
#   sh docker/trainer-requirements.sh cpu|gpu requirements.txt > requirements-trainer.txt
set -eu
flavor="$1"
requirements="$2"
case "$flavor" in
    cpu) grep -v -E '^apache-airflow' "$requirements" ;;
    gpu)
        tf_version="$(sed -n 's/^tensorflow-cpu==//p' "$requirements")"
        [ -n "$tf_version" ] || { echo "no tensorflow-cpu== pin in $requirements" >&2; exit 1; }
        grep -v -E '^(apache-airflow|tensorflow-cpu)' "$requirements"
        echo "tensorflow[and-cuda]==${tf_version}"
        ;;
    *) echo "usage: $0 cpu|gpu REQUIREMENTS" >&2; exit 2 ;;
esac
