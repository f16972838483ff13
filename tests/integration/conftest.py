"""Fixtures shared by the integration tests.

scripts/run-integration.sh starts a fresh Kafka broker and Redis (scripts/services.sh) and exports
where they are. To run pytest by hand against services you started yourself:

    scripts/services.sh start && set -a && . run/services.env && set +a
    .venv/bin/python -m pytest tests/integration

COPYSTREAM_BIN and PROJECT_ROOT default to build/copystream and this checkout.
"""

import os
import shlex
import subprocess
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


@pytest.fixture(scope="session")
def sasl(env):
    """The broker's SASL_PLAINTEXT listener with SASL/PLAIN, which services.sh always opens,
    and the user it accepts."""
    names = ("KAFKA_SASL_BOOTSTRAP", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USER",
             "KAFKA_SASL_PASSWORD")
    missing = [k for k in names if not os.environ.get(k)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not set: the services were started by an older "
                    "scripts/services.sh")
    return {
        "bootstrap": os.environ["KAFKA_SASL_BOOTSTRAP"],
        "mechanism": os.environ["KAFKA_SASL_MECHANISM"],
        "user": os.environ["KAFKA_SASL_USER"],
        "password": os.environ["KAFKA_SASL_PASSWORD"],
    }


def _read_services_env(path):
    out = {}
    for line in Path(path).read_text().splitlines():
        name, _, value = line.partition("=")
        out[name] = shlex.split(value)[0] if value else ""
    return out


@pytest.fixture(scope="session")
def auth_redis(env):
    """A second Redis, started for these tests by `services.sh start-redis --redis-auth`: it
    refuses clients that do not authenticate, the default user has a password (requirepass)
    and an ACL user has another. Yields host, port, password, acl_user, acl_password and a
    client authenticated as the default user."""
    import redis

    folder = env["services_dir"] / "redis-auth"
    script = str(env["root"] / "scripts" / "services.sh")
    subprocess.run([script, "start-redis", "--dir", str(folder), "--redis-auth"], check=True,
                   timeout=120)
    try:
        v = _read_services_env(folder / "services.env")
        client = redis.Redis(host=v["REDIS_HOST"], port=int(v["REDIS_PORT"]),
                             password=v["REDIS_PASSWORD"])
        yield {
            "host": v["REDIS_HOST"], "port": int(v["REDIS_PORT"]),
            "password": v["REDIS_PASSWORD"], "acl_user": v["REDIS_ACL_USER"],
            "acl_password": v["REDIS_ACL_PASSWORD"], "client": client,
        }
        client.close()
    finally:
        subprocess.run([script, "stop", "--dir", str(folder)], timeout=120)
