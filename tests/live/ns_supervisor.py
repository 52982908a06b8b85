"""Runs INSIDE a private network namespace: starts the Airflow components and bridges their API out.

Started by `airflow_server.py` as `unshare -rn --pid --mount-proc --kill-child=SIGTERM sh -c
'ip link set lo up && exec python ns_supervisor.py SPEC.json'`: this process is PID 1 of a private
PID + network namespace, so when it exits the kernel kills whatever is left inside, and nothing of
Airflow was ever listening outside. Airflow's log servers
bind 0.0.0.0, but 0.0.0.0 here is only the namespace's own loopback.

The only way in is a unix socket in the temp dir (the file system is shared, the network is not):
each connection to it is forwarded to 127.0.0.1:<api port> inside. Stdlib only.

It stops everything (SIGTERM, then SIGKILL after a grace period, each child by its PID) on SIGTERM
(unshare forwards its own death as SIGTERM), when a component dies, or when the test process goes
away (EOF on the pipe whose write end only the test process holds). Then it writes `stopped`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

GRACE_S = 15.0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except RuntimeError:
            pass


async def _bridge(socket_path: str, port: int) -> asyncio.AbstractServer:
    async def handle(client_r, client_w):
        try:
            api_r, api_w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            client_w.close()  # API not up yet: the client retries
            return
        await asyncio.gather(_pipe(client_r, api_w), _pipe(api_r, client_w))

    return await asyncio.start_unix_server(handle, path=socket_path)


def _start(spec: dict) -> dict[str, subprocess.Popen]:
    children: dict[str, subprocess.Popen] = {}
    for name, argv in spec["components"].items():
        log = open(Path(spec["log_dir"]) / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        children[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=spec["env"],
            cwd=spec["cwd"],
            start_new_session=True,
        )
    Path(spec["pids_file"]).write_text(json.dumps({n: c.pid for n, c in children.items()}) + "\n")
    return children


def _stop(children: dict[str, subprocess.Popen]) -> None:
    """SIGTERM each component's process group (by its PID), then SIGKILL what is left."""
    for child in children.values():
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
    for child in children.values():
        try:
            child.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    for child in children.values():  # grandchildren the component left in its group
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def _main(spec: dict) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent_gone = asyncio.Event()
    loop.add_reader(spec["parent_fd"], parent_gone.set)  # readable = EOF: the test process is gone
    server = await _bridge(spec["socket"], spec["api_port"])
    children = _start(spec)
    reason = "stop requested"
    while not stop.is_set():
        dead = [n for n, c in children.items() if c.poll() is not None]
        if dead:
            reason = f"component exited: {', '.join(dead)}"
            break
        if parent_gone.is_set():
            reason = "test process gone"
            break
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    server.close()
    await loop.run_in_executor(None, _stop, children)
    print(f"ns_supervisor: {reason}; stopped {sorted(children)}", flush=True)
    Path(spec["stopped_file"]).write_text(reason + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(json.loads(Path(sys.argv[1]).read_text()))))
