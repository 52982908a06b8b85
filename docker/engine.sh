#!/usr/bin/env bash
# A private Docker engine for the docker-runner tests and image builds: `docker/engine.sh start|stop|status`.
#
# `start` runs dockerd (installing Debian's docker.io when it is missing; needs root) with ALL its state
# in one folder that is not a system path (EDGETPU_DOCKER_STATE, default ~/.cache/edgetpu-retrain/docker:
# kept between runs, so built images stay cached), no bridge network and no iptables/NAT changes, and
# prints `DOCKER_HOST=unix://...` (its last stdout line). It reuses an engine that already answers.
# `stop` sends SIGTERM to that dockerd's PID (its containerd exits with it), waits, then removes what
# dockerd leaves outside the state folder. Both are idempotent; start/stop take a lock.
# Containers of this engine have only the `none` and `host` networks: run steps with --network none.
set -euo pipefail

STATE="${EDGETPU_DOCKER_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgetpu-retrain/docker}"
SOCK="$STATE/docker.sock"
PIDFILE="$STATE/docker.pid"
LOG="$STATE/dockerd.log"
START_TIMEOUT="${EDGETPU_DOCKER_START_TIMEOUT:-60}"
STOP_TIMEOUT="${EDGETPU_DOCKER_STOP_TIMEOUT:-60}"
export DOCKER_HOST="unix://$SOCK"

say() { echo "engine: $*" >&2; }
die() { say "$*"; exit 1; }

# PID of our dockerd if it runs (the pidfile's process must be a dockerd: PIDs get reused).
engine_pid() {
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" = dockerd ] || return 1
    echo "$pid"
}

answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

install_engine() {
    command -v dockerd >/dev/null && return 0
    [ "$(id -u)" = 0 ] || die "dockerd is not installed and installing it needs root (apt-get install docker.io)"
    command -v apt-get >/dev/null || die "dockerd is not installed and there is no apt-get: install Docker Engine"
    say "installing docker.io (Debian's Docker Engine)"
    # Its service start is refused in containers/VMs without an init system; we start dockerd ourselves.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >"$STATE/apt.log" 2>&1 \
        || { tail -n 20 "$STATE/apt.log" >&2; die "apt-get install docker.io failed (log: $STATE/apt.log)"; }
}

# What dockerd leaves outside $STATE, and mounts left inside it (the default netns is an nsfs mount).
cleanup() {
    local mnt
    while read -r mnt; do
        umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || say "could not unmount $mnt"
    done < <(awk -v s="$STATE/" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo | sort -r)
    rm -rf /var/run/docker/plugins
    rmdir /var/run/docker 2>/dev/null || true
    rm -f /etc/docker/key.json "$PIDFILE" "$SOCK"
}

start() {
    if engine_pid >/dev/null && answers; then
        say "reusing dockerd $(engine_pid) ($STATE)"
        echo "DOCKER_HOST=$DOCKER_HOST"
        return 0
    fi
    if pid="$(engine_pid)"; then
        die "dockerd $pid is running but does not answer on $SOCK; run: $0 stop"
    fi
    [ "$(id -u)" = 0 ] || die "starting dockerd needs root"
    install_engine
    cleanup
    mkdir -p "$STATE/exec" "$STATE/data"
    # An own (empty) config file: never pick up /etc/docker/daemon.json.
    [ -f "$STATE/daemon.json" ] || echo '{}' >"$STATE/daemon.json"
    setsid dockerd \
        --config-file "$STATE/daemon.json" \
        -H "$DOCKER_HOST" --exec-root "$STATE/exec" --data-root "$STATE/data" --pidfile "$PIDFILE" \
        --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
        --userland-proxy=false --storage-driver=overlay2 \
        </dev/null >"$LOG" 2>&1 9>&- &
    local launched=$! waited=0
    until answers; do
        if ! kill -0 "$launched" 2>/dev/null; then
            tail -n 20 "$LOG" >&2
            die "dockerd exited during start (log: $LOG)"
        fi
        if [ "$waited" -ge $((START_TIMEOUT * 5)) ]; then
            kill -TERM "$launched" 2>/dev/null || true
            die "dockerd did not answer within ${START_TIMEOUT}s (log: $LOG)"
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
    say "started dockerd $launched in $((waited / 5)).$((waited % 5 * 2))s ($STATE, log $LOG)"
    echo "DOCKER_HOST=$DOCKER_HOST"
}

stop() {
    local pid waited=0
    if pid="$(engine_pid)"; then
        kill -TERM "$pid"
        while [ -d "/proc/$pid" ]; do
            if [ "$waited" -ge $((STOP_TIMEOUT * 5)) ]; then
                say "dockerd $pid ignored SIGTERM for ${STOP_TIMEOUT}s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                sleep 1
                break
            fi
            sleep 0.2
            waited=$((waited + 1))
        done
        say "stopped dockerd $pid"
    else
        say "no dockerd running for $STATE"
    fi
    cleanup
}

status() {
    if pid="$(engine_pid)" && answers; then
        say "dockerd $pid answers ($(docker version --format '{{.Server.Version}}'))"
        echo "DOCKER_HOST=$DOCKER_HOST"
    else
        say "not running ($STATE)"
        return 3
    fi
}

case "${1:-}" in
    start|stop|status)
        mkdir -p "$STATE"
        exec 9>"$STATE/engine.lock"
        flock 9
        "$1"
        ;;
    *)
        echo "usage: $0 start|stop|status   (state: $STATE)" >&2
        exit 2
        ;;
esac
