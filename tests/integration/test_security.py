"""Security: the service end to end through the broker's SASL_PLAINTEXT listener (SASL/PLAIN)
and against a Redis that demands AUTH, as the default user and as an ACL user; wrong
credentials stop start-up with a message that names the keys to fix; and no password ever
appears in anything copystream prints, in its config dump or on /metrics.

The broker's SASL listener is always there (scripts/services.sh); the AUTH Redis is a second
one the auth_redis fixture starts. Passwords are random per run, so finding one in output is
never a coincidence.
"""

import signal
import time
import uuid

import redis

import cs

T0 = 1_700_000_000_000

CATALOG = [
    cs.catalog_item("lock-1", {"en-US": "Safe One", "zh-CN": "保险箱一号"}, "safes",
                    [("steel", {"en-US": "steel body", "zh-CN": "钢制箱体"})]),
    cs.catalog_item("lock-2", {"en-US": "Safe Two", "zh-CN": "保险箱二号"}, "safes",
                    [("steel", {"en-US": "steel body", "zh-CN": "钢制箱体"})]),
]







def assert_secret_free(text, *secrets):
    for s in secrets:
        assert s not in text, f"a secret appears in:\n{text[-3000:]}"


def sasl_config(sasl, password=None):
    """copystream's keys for the SASL listener, in the environment form."""
    return {
        "COPYSTREAM_KAFKA_BOOTSTRAP_SERVERS": sasl["bootstrap"],
        "COPYSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "COPYSTREAM_KAFKA_SASL_MECHANISMS": sasl["mechanism"],
        "COPYSTREAM_KAFKA_SASL_USERNAME": sasl["user"],
        "COPYSTREAM_KAFKA_SASL_PASSWORD": password or sasl["password"],
    }


def clicks(users, n, first=0):
    return [cs.click(f"e{first + i}", users[i % len(users)], T0 + (first + i) * 1000,
                     ["view", "click"][i % 2], "lock-1", "safes") for i in range(n)]


# -- Kafka: SASL/PLAIN ----------------------------------------------------------------------------

def test_service_runs_end_to_end_over_sasl_plain_and_never_shows_the_password(env, sasl):
    """topics, run and tail all go through the SASL listener: events in, copies out, the
    metrics count them, and the password is in no output, log line, config dump or metric."""
    port = cs.free_port()
    d = cs.Deployment(env, COPYSTREAM_HTTP_PORT=port, COPYSTREAM_COPY_MIN__INTERVAL__S=0,
                      **sasl_config(sasl))
    try:
        # The test's own producer uses the PLAINTEXT listener: only copystream's clients
        # are under test here.
        d.send_catalog(CATALOG)
        d.send_clicks(clicks(["u1", "u2", "u3"], 12))
        p = d.start()
        page = ""

        def counted():
            nonlocal page
            try:
                _, page = cs.scrape(port, "/metrics")
            except OSError:
                return False
            return cs.metric(page, 'copystream_copies_produced_total{locale="en-US",'
                                'strategy="affinity"}') == 12
        cs.wait_for("12 copies on /metrics:\n" + page, counted, timeout=60)
        status, health = cs.scrape(port, "/healthz")
        assert status == 200, health
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0, d.log(p)

        copies = d.copies()
        assert len(copies) == 12
        assert {c["user_id"] for c in copies} == {"u1", "u2", "u3"}
        # Another client kind, the consumer of `copystream tail`, through SASL too.
        tail = d.run(["tail", "--summary", "--limit", "0"])
        assert tail.stdout.strip() == "copies 12 en-US=12", tail.stdout
        dump = d.run(["config"])
        assert "kafka.sasl.password = ***  # env COPYSTREAM_KAFKA_SASL_PASSWORD" in dump.stdout
        assert f"kafka.sasl.username = {sasl['user']}" in dump.stdout

        secret = sasl["password"]
        for text in (d.log(p), page, health, tail.stdout, tail.stderr, dump.stdout,
                     dump.stderr):
            assert_secret_free(text, secret)
    finally:
        d.stop_all()


def test_wrong_sasl_password_stops_startup_naming_the_keys_not_the_password(env, sasl):
    wrong = f"wrong-{uuid.uuid4().hex}"
    d = cs.Deployment(env, **sasl_config(sasl))  # topics made with the right password
    try:
        for args in (["run", "--exit-when-idle", "500"], ["topics"], ["tail", "--summary"],
                     ["loadgen", "--count", "10"]):
            t0 = time.time()
            r = d.run(args, check=False, timeout=60, COPYSTREAM_KAFKA_SASL_PASSWORD=wrong)
            out = r.stdout + r.stderr
            assert r.returncode != 0, f"{args} exited 0 with a wrong password:\n{out}"
            # It stops at the broker's first refusal, not at some timeout.
            assert time.time() - t0 < 20, f"{args} took {time.time() - t0:.1f} s"
            assert "refused copystream's credentials" in out, out
            assert "kafka.sasl.password" in out and "Authentication failed" in out, out
            assert_secret_free(out, wrong, sasl["password"])
    finally:
        d.stop_all()


def test_plaintext_client_on_the_sasl_listener_is_not_let_in(env, sasl):
    """Proves the listener really demands SASL: without it, no broker answers."""
    d = cs.Deployment(env)
    try:
        r = d.run(["tail", "--summary"], check=False, timeout=60,
                  COPYSTREAM_KAFKA_BOOTSTRAP_SERVERS=sasl["bootstrap"])
        assert r.returncode != 0
        assert "kafka.security.protocol" in r.stderr, r.stderr
    finally:
        d.stop_all()


# -- Redis AUTH ---------------------------------------------------------------------------------

def redis_config(auth_redis, **keys):
    out = {"COPYSTREAM_REDIS_HOST": auth_redis["host"],
           "COPYSTREAM_REDIS_PORT": auth_redis["port"]}
    out.update(keys)
    return out


def test_redis_requirepass_with_the_right_password_keeps_state(env, auth_redis):
    d = cs.Deployment(env, COPYSTREAM_COPY_MIN__INTERVAL__S=0,
                      **redis_config(auth_redis, COPYSTREAM_REDIS_PASSWORD=auth_redis["password"]))
    try:
        d.send_catalog(CATALOG)
        d.send_clicks(clicks(["u1", "u2"], 6))
        p = d.run_until_idle()
        assert d.user_hash(auth_redis["client"], "u1")[b"n.view"] == b"3"
        assert d.user_hash(auth_redis["client"], "u2")[b"n.click"] == b"3"
        assert len(d.copies()) == 6
        dump = d.run(["config"])
        assert "redis.password = ***  # env COPYSTREAM_REDIS_PASSWORD" in dump.stdout
        assert_secret_free(d.log(p) + dump.stdout + dump.stderr, auth_redis["password"])
    finally:
        d.stop_all()


def test_redis_wrong_or_missing_password_stops_startup_naming_the_key(env, auth_redis):
    wrong = f"wrong-{uuid.uuid4().hex}"
    d = cs.Deployment(env, **redis_config(auth_redis))
    try:
        r = d.run(["run", "--exit-when-idle", "500"], check=False, COPYSTREAM_REDIS_PASSWORD=wrong)
        assert r.returncode == 1
        assert "refused authentication (check redis.user and redis.password): WRONGPASS" in \
            r.stderr, r.stderr
        assert_secret_free(r.stdout + r.stderr, wrong, auth_redis["password"])

        r = d.run(["run", "--exit-when-idle", "500"], check=False)
        assert r.returncode == 1
        assert "requires authentication: set redis.password or redis.password_file" in \
            r.stderr, r.stderr
        assert not d.user_keys(auth_redis["client"])
    finally:
        d.stop_all()


def test_redis_acl_user_with_a_wrong_password_stops_startup_naming_the_user(env, auth_redis):
    wrong = f"wrong-{uuid.uuid4().hex}"
    d = cs.Deployment(env, **redis_config(auth_redis, COPYSTREAM_REDIS_USER=auth_redis["acl_user"],
                                          COPYSTREAM_REDIS_PASSWORD=wrong))
    try:
        r = d.run(["run", "--exit-when-idle", "500"], check=False)
        assert r.returncode == 1
        assert (f'refused authentication as user "{auth_redis["acl_user"]}" (check redis.user '
                f'and redis.password): WRONGPASS') in r.stderr, r.stderr
        assert_secret_free(r.stdout + r.stderr, wrong, auth_redis["acl_password"])
    finally:
        d.stop_all()


def test_redis_acl_user_from_a_password_file_reauthenticates_after_reconnecting(
        env, auth_redis, tmp_path):
    """The service runs as the ACL user with its password in redis.password_file; Redis then
    drops its connections, and the events after that are still applied: the reconnect
    authenticated again (without AUTH every command would get NOAUTH)."""
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(auth_redis["acl_password"] + "\n")
    d = cs.Deployment(env, COPYSTREAM_COPY_MIN__INTERVAL__S=0,
                      **redis_config(auth_redis, COPYSTREAM_REDIS_USER=auth_redis["acl_user"],
                                     COPYSTREAM_REDIS_PASSWORD__FILE=secret_file))
    r = auth_redis["client"]
    try:
        d.send_catalog(CATALOG)
        d.send_clicks(clicks(["u1"], 4))
        p = d.start()
        cs.wait_for("u1's first events", lambda: d.user_hash(r, "u1").get(b"n.click") == b"2",
                    timeout=60)
        killed = r.execute_command("CLIENT", "KILL", "USER", auth_redis["acl_user"])
        assert killed >= 1
        d.send_clicks(clicks(["u1", "u2"], 4, first=4))
        cs.wait_for("events after the reconnect",
                    lambda: d.user_hash(r, "u2").get(b"n.click") == b"2" and
                    d.user_hash(r, "u1").get(b"n.view") == b"4", timeout=60)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0, d.log(p)
        # A batch cut off by the dropped connection runs again: a copy it had
        # published may go out twice, as the same bytes (at-least-once).
        copies = {}
        for c in d.copies():
            assert copies.setdefault(c["copy_id"], c) == c
        assert len(copies) == 8
        # The user has only the command categories docs/SECURITY.md lists.
        assert "NOPERM" not in d.log(p), d.log(p)
        assert_secret_free(d.log(p), auth_redis["acl_password"], auth_redis["password"])
    finally:
        d.stop_all()


def test_acl_user_is_really_required_to_authenticate(auth_redis):
    """The fixture's Redis refuses anonymous clients, so the tests above prove something."""
    anon = redis.Redis(host=auth_redis["host"], port=auth_redis["port"])
    try:
        anon.ping()
        raise AssertionError("Redis answered a client that did not authenticate")
    except redis.exceptions.AuthenticationError:
        pass
    finally:
        anon.close()


def test_sasl_password_stays_out_of_librdkafka_debug_output(env, sasl):
    """Even at kafka.debug=all with log.level=debug, where librdkafka prints every property
    it was given, the password is shown as [redacted]."""
    d = cs.Deployment(env, **sasl_config(sasl))
    try:
        r = d.run(["topics"], COPYSTREAM_KAFKA_DEBUG="all", COPYSTREAM_LOG_LEVEL="debug")
        assert "sasl.password = [redacted]" in r.stderr, r.stderr[-3000:]
        assert_secret_free(r.stdout + r.stderr, sasl["password"])
    finally:
        d.stop_all()
