"""Fixtures shared by the integration tests.

scripts/run-integration.sh starts a fresh Kafka broker and Redis (scripts/services.sh) and exports
where they are. To run pytest by hand against services you started yourself:

    scripts/services.sh start && set -a && . run/services.env && set +a
    .venv/bin/python -m pytest tests/integration

COPYSTREAM_BIN and PROJECT_ROOT default to build/copystream and this checkout.
"""

import os
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]

# copystream treats every COPYSTREAM_* variable as a configuration key and refuses unknown ones,
# so the binary's path must not reach the copystream processes the tests start.
_BIN = os.environ.pop("COPYSTREAM_BIN", None)


@pytest.fixture(scope="session")
def env():
    """Where the services and the binary under test are."""
    missing = [k for k in ("KAFKA_BOOTSTRAP", "REDIS_HOST", "REDIS_PORT", "SERVICES_DIR")
               if not os.environ.get(k)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not set: run the integration tests with "
                    "scripts/run-integration.sh BUILD (or source a services.env)")
    root = Path(os.environ.get("PROJECT_ROOT", ROOT))
    return {
        "bootstrap": os.environ["KAFKA_BOOTSTRAP"],
        "redis_host": os.environ["REDIS_HOST"],
        "redis_port": int(os.environ["REDIS_PORT"]),
        "bin": Path(_BIN or root / "build" / "copystream"),
        "root": root,
        "services_dir": Path(os.environ["SERVICES_DIR"]),
    }


@pytest.fixture(scope="session")
def redis_client(env):
    client = redis.Redis(host=env["redis_host"], port=env["redis_port"])
    yield client
    client.close()
