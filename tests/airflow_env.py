"""A private Airflow home for the tests that load Airflow: never the developer's own.

`use_private_airflow_home()` must run before Airflow is first imported (it reads its configuration
then): the test modules call it at import time, ahead of their other imports. The home is a temp
dir made once per test session (shared through EDGETPU_TEST_AIRFLOW_HOME, removed at exit) with a
sqlite DB inside, the repository's dags/ folder and no example DAGs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def use_private_airflow_home() -> str:
    """Point AIRFLOW_HOME and the Airflow settings at the session's temp home; return its path."""
    if "EDGETPU_TEST_AIRFLOW_HOME" not in os.environ:
        home = tempfile.mkdtemp(prefix="edgetpu-airflow-test-")
        os.environ["EDGETPU_TEST_AIRFLOW_HOME"] = home
        atexit.register(shutil.rmtree, home, True)
    home = os.environ["EDGETPU_TEST_AIRFLOW_HOME"]
    os.environ.update(
        AIRFLOW_HOME=home,
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
    )
    return home
