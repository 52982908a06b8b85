"""The trainer image on the real engine: who a step runs as, what network it sees, which pins it has.

Real engine (docker/engine.sh) and image (docker/build.sh); skips with one line without an engine,
fails under CI=true.
"""

from __future__ import annotations

import json

from docker_engine import REPO, Engine, docker_engine, trainer_image  # noqa: F401

PROBE = """
import json, os, socket, importlib.metadata as md, importlib.resources as res
import tensorflow as tf, keras
print(json.dumps({
    "interfaces": [name for _, name in socket.if_nameindex()], "uid": os.getuid(), "gid": os.getgid(),
    "home_writable": os.access(os.environ["HOME"], os.W_OK),
    "versions": {name: md.version(name) for name in ("tensorflow-cpu", "keras", "numpy")},
    "package_data": sorted(p.name for sub in ("configs", "pretrained_weights")
                           for p in res.files("edgetpu_retrain.model").joinpath(sub).iterdir()
                           if p.is_file()),
}))
"""


def test_step_container_user_network_and_pins(docker_engine: Engine, trainer_image: str) -> None:  # noqa: F811
    out = docker_engine.client().containers.run(
        trainer_image, ["python", "-c", PROBE], network_mode="none", remove=True
    )
    probe = json.loads(out.decode().splitlines()[-1])
    assert probe["interfaces"] == ["lo"]  # network_mode none: loopback only
    assert (probe["uid"], probe["gid"]) == (50000, 0) and probe["home_writable"]  # weights cache in HOME
    pins = dict(
        line.split("==")
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.startswith(("tensorflow-cpu==", "keras==", "numpy=="))
    )
    assert probe["versions"] == pins
    model = REPO / "include" / "edgetpu_retrain" / "model"
    shipped = sorted(
        p.name for sub in ("configs", "pretrained_weights") for p in (model / sub).iterdir() if p.is_file()
    )
    assert probe["package_data"] == shipped  # templates + bundled weights are in the wheel (package-data)
