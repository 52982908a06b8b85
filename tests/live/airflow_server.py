"""A real Airflow (scheduler + dag-processor + triggerer + api-server) for tests, in a private netns.

`LiveAirflow.start(...)` makes a temp AIRFLOW_HOME (sqlite + LocalExecutor), a data root, the
SimpleAuthManager users with known passwords, migrates the DB, then starts `ns_supervisor.py` under
`unshare -rn`: every Airflow component and its log server lives in that private network namespace.
The API is reached through a unix socket in the temp dir, re-exposed here on 127.0.0.1:<random> by a
small forwarder thread, so httpx and a browser outside can use it while nothing binds outside
loopback. `stop()` stops the supervisor by its PID (it stops the components by theirs).

    with LiveAirflow.start(dags_folder=..., env={...}) as af:
        api = af.api()                       # ApiClient, logged in as admin (JWT from /auth/token)
        api.unpause("edgetpu_retrain")
        run = api.trigger("edgetpu_retrain", conf={...})
        api.wait_run("edgetpu_retrain", run["dag_run_id"], timeout=600)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
API_PORT = 8080  # inside the namespace: never clashes with anything outside
USERS = {"admin": ("admin", "admin-pass"), "viewer": ("viewer", "viewer-pass")}  # name -> (role, password)
TERMINAL = {"success", "failed"}


def airflow_env(*, home: Path, dags_folder: Path, extra: dict[str, str]) -> dict[str, str]:
    """The environment of every Airflow process: private home, sqlite, LocalExecutor, fast loops."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__PARALLELISM="4",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__AUTH_MANAGER="airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=",".join(f"{u}:{r}" for u, (r, _) in USERS.items()),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "passwords.json"),
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{API_PORT}/execution/",
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(API_PORT),
        AIRFLOW__API__WORKERS="1",
        AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{API_PORT}",
        AIRFLOW__API_AUTH__JWT_SECRET="edgetpu-live-test-secret-" + os.urandom(8).hex(),
        AIRFLOW__API__SECRET_KEY=os.urandom(16).hex(),
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="10",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
        AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT="600",
        AIRFLOW__TRIGGERER__CAPACITY="50",
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(home / "logs"),
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
    )
    env.update(extra)
    return env


def _run(argv: list[str], *, env: dict[str, str]) -> None:
    """An Airflow CLI call that must work; its output is shown only when it fails."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[2:])} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
        )


class _TcpBridge:
    """127.0.0.1:<random> here -> the supervisor's unix socket (-> the API inside the namespace)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = str(socket_path)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True, name="airflow-bridge")
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _handle(self, client_r, client_w) -> None:
        try:
            up_r, up_w = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            client_w.close()
            return

        async def pipe(r, w):
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except ConnectionError:
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class ApiClient:
    """The REST API v2 calls the tests need, with a JWT from /auth/token."""

    http: httpx.Client

    @classmethod
    def login(cls, url: str, *, username: str, password: str) -> ApiClient:
        response = httpx.post(
            f"{url}/auth/token", json={"username": username, "password": password}, timeout=30
        )
        response.raise_for_status()
        token = response.json()["access_token"]
        return cls(
            httpx.Client(base_url=f"{url}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=60)
        )

    def _json(self, method: str, path: str, **kwargs) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path}: {response.status_code} {response.text[:2000]}")
        return response.json() if response.content else None

    def dag(self, dag_id: str) -> dict:
        return self._json("GET", f"/dags/{dag_id}")

    def wait_dag(self, dag_id: str, *, timeout: float = 120) -> dict:
        """Wait until the dag-processor has parsed `dag_id` (fails with the import errors)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.http.get(f"/dags/{dag_id}")
            if response.status_code == 200:
                return response.json()
            time.sleep(1)
        raise AssertionError(f"{dag_id} not parsed in {timeout} s; import errors: {self.import_errors()}")

    def import_errors(self) -> list[dict]:
        return self._json("GET", "/importErrors")["import_errors"]

    def unpause(self, dag_id: str, paused: bool = False) -> dict:
        return self._json("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    def trigger(self, dag_id: str, *, conf: dict | None = None, run_id: str | None = None) -> dict:
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self._json("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def run(self, dag_id: str, run_id: str) -> dict:
        return self._json("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def runs(self, dag_id: str, **filters) -> list[dict]:
        return self._json("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100, **filters})["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self._json("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {ti["task_id"]: ti["state"] for ti in self.task_instances(dag_id, run_id)}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The task's log as text: one line per record (`event`, plus `error_detail` if any)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        body = self._json("GET", path, params={"full_content": True}, headers={"Accept": "application/json"})
        content = body.get("content", [])
        if isinstance(content, str):
            return content
        lines = []
        for record in content:
            if isinstance(record, dict):
                lines.append(
                    str(record.get("event", ""))
                    + (f" {record['error_detail']}" if record.get("error_detail") else "")
                )
            else:
                lines.append(str(record))
        return "\n".join(lines)

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self._json("GET", path, params={"deserialize": True})["value"]

    def clear(self, dag_id: str, *, run_id: str, task_ids: list[str] | None = None) -> dict:
        body: dict[str, Any] = {
            "dry_run": False,
            "dag_run_id": run_id,
            "only_failed": False,
            "reset_dag_runs": True,
        }
        if task_ids:
            body["task_ids"] = task_ids
        return self._json("POST", f"/dags/{dag_id}/clearTaskInstances", json=body)

    def backfill(
        self,
        dag_id: str,
        *,
        from_date: str,
        to_date: str,
        conf: dict | None = None,
        reprocess: str = "none",
        max_active_runs: int = 1,
    ) -> dict:
        """POST /backfills; `reprocess`: none | failed | completed (runs that already exist)."""
        body = {
            "dag_id": dag_id,
            "from_date": from_date,
            "to_date": to_date,
            "dag_run_conf": conf or {},
            "reprocess_behavior": reprocess,
            "max_active_runs": max_active_runs,
            "run_backwards": False,
        }
        return self._json("POST", "/backfills", json=body)

    def backfill_dry_run(self, dag_id: str, *, from_date: str, to_date: str, reprocess: str = "none") -> dict:
        body = {"dag_id": dag_id, "from_date": from_date, "to_date": to_date, "reprocess_behavior": reprocess}
        return self._json("POST", "/backfills/dry_run", json=body)

    def set_run_state(self, dag_id: str, run_id: str, state: str) -> dict:
        """PATCH a run's state (e.g. "failed": stops its running tasks)."""
        return self._json("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}", json={"state": state})

    def asset_events(self, **filters) -> list[dict]:
        """GET /assets/events (filters: source_dag_id, source_run_id, asset_id, ...), oldest first."""
        return self._json("GET", "/assets/events", params={"order_by": "timestamp", **filters})[
            "asset_events"
        ]

    def wait_run(self, dag_id: str, run_id: str, *, timeout: float, states: set[str] = TERMINAL) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in states:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{run_id} still {run['state']} after {timeout} s: {self.task_states(dag_id, run_id)}"
                )
            time.sleep(2)

    def wait_task(self, dag_id: str, run_id: str, task_id: str, *, states: set[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = self.task_states(dag_id, run_id).get(task_id)
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"{task_id} of {run_id} is {state} after {timeout} s, wanted {states}")
            time.sleep(1)


@dataclass
class LiveAirflow:
    tmp: Path
    home: Path
    data_root: Path
    env: dict[str, str]
    process: subprocess.Popen
    bridge: _TcpBridge
    parent_w: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.bridge.port}"

    @classmethod
    def start(
        cls,
        *,
        dags_folder: Path,
        env: dict[str, str] | None = None,
        tmp: Path | None = None,
        pools: dict[str, int] | None = None,
        timeout: float = 240,
    ) -> LiveAirflow:
        """Migrate a fresh home, start the components in a private netns, wait for the API's health."""
        started = time.monotonic()
        tmp = Path(tmp or tempfile.mkdtemp(prefix="edgetpu-live-"))
        home, data_root = tmp / "airflow", tmp / "data"
        (data_root / "incoming").mkdir(parents=True, exist_ok=True)
        (home / "logs").mkdir(parents=True, exist_ok=True)
        (home / "passwords.json").write_text(json.dumps({u: p for u, (_, p) in USERS.items()}) + "\n")
        extra = {"EDGETPU_DATA_ROOT": str(data_root), **(env or {})}
        full_env = airflow_env(home=home, dags_folder=Path(dags_folder), extra=extra)
        airflow = [sys.executable, "-m", "airflow"]
        _run([*airflow, "db", "migrate"], env=full_env)
        for pool, slots in (pools or {"training": 1}).items():
            _run([*airflow, "pools", "set", pool, str(slots), "tests"], env=full_env)
        migrated = time.monotonic()
        spec = {
            "components": {name: [*airflow, name] for name in COMPONENTS},
            "env": full_env,
            "cwd": str(tmp),
            "log_dir": str(tmp),
            "socket": str(tmp / "api.sock"),
            "api_port": API_PORT,
            "pids_file": str(tmp / "pids.json"),
        }
        parent_r, parent_w = os.pipe()  # the supervisor sees EOF when this process dies
        spec.update(parent_fd=parent_r, stopped_file=str(tmp / "stopped"))
        (tmp / "spec.json").write_text(json.dumps(spec))
        process = subprocess.Popen(
            [
                "unshare",
                "-rn",
                "--pid",
                "--mount-proc",
                "--kill-child=SIGTERM",
                "sh",
                "-c",
                'ip link set lo up && exec "$0" "$@"',
                sys.executable,
                str(HERE / "ns_supervisor.py"),
                str(tmp / "spec.json"),
            ],
            stdout=open(tmp / "supervisor.log", "ab"),
            stderr=subprocess.STDOUT,  # noqa: SIM115
            pass_fds=(parent_r,),
        )
        os.close(parent_r)
        server = cls(
            tmp=tmp,
            home=home,
            data_root=data_root,
            env=full_env,
            process=process,
            bridge=_TcpBridge(tmp / "api.sock"),
            parent_w=parent_w,
        )
        try:
            server._wait_healthy(timeout)
        except BaseException:
            server.stop()
            raise
        server.timings = {"migrate_s": migrated - started, "components_up_s": time.monotonic() - migrated}
        return server

    def _wait_healthy(self, timeout: float) -> None:
        """Healthy = the API answers and the scheduler, dag-processor and triggerer heartbeat."""
        deadline = time.monotonic() + timeout
        health: Any = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"supervisor exited ({self.process.returncode}); logs: {self.tmp}/*.log\n"
                    + self.log("supervisor")[-3000:]
                )
            try:
                health = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
                parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
                if all((health.get(p) or {}).get("status") == "healthy" for p in parts):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"Airflow not healthy after {timeout} s: {health}; logs in {self.tmp}")

    def api(self, user: str = "admin") -> ApiClient:
        return ApiClient.login(self.url, username=user, password=USERS[user][1])

    def log(self, component: str) -> str:
        path = self.tmp / f"{component}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self) -> dict[str, int]:
        path = self.tmp / "pids.json"
        return {"supervisor": self.process.pid, **(json.loads(path.read_text()) if path.exists() else {})}

    def supervisor_pid(self) -> int | None:
        """The supervisor's PID as seen here: unshare's only child (unshare --fork)."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            children = path.read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def stop(self, *, keep: bool = False) -> None:
        """SIGTERM the supervisor by its PID (it stops each component by its PID and exits; unshare
        ignores SIGTERM while it waits, then exits with it), then wait: PID 1 gone = namespace empty."""
        pid = self.supervisor_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        try:
            self.process.wait(90)
        except subprocess.TimeoutExpired:
            self.process.kill()  # --kill-child: the kernel then ends the whole PID namespace
            self.process.wait()
        os.close(self.parent_w)
        self.bridge.close()
        if not keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> LiveAirflow:
        return self

    def __exit__(self, *exc) -> None:
        self.stop(keep=os.environ.get("EDGETPU_LIVE_KEEP") == "1")
