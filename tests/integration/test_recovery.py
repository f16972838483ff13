"""Nothing lost, nothing counted twice: the service killed with SIGKILL at random
moments mid-stream and restarted ends in exactly the state of a clean single
pass over the same input -- the bandit's shared statistics included -- and
publishes a copy for every event that caused one in the clean pass. At least
once, duplicates come only as byte-identical republications; exactly once, a
read_committed reader of the copy topic sees exactly one copy per event.
"""

import random
import subprocess
import time

import pytest

import cs

T0 = 1_700_000_000_000
EVENTS = 40000


def counted_events(d, redis_client):
    total = 0
    for key in d.user_keys(redis_client):
        for field, value in redis_client.hgetall(key).items():
            if field.startswith(b"n.") or field == b"dup":
                total += int(value)
    return total


def state_without_versions(d, redis_client):
    out = {}
    for key in d.user_keys(redis_client):
        user = key.decode().split("{", 1)[1].rstrip("}")
        out[user] = {f: v for f, v in redis_client.hgetall(key).items() if f != b"v"}
    return out


def comparable(copy):
    """A copy without what legitimately differs between two deployments: its
    creation time and the source topic's name (each test has its own). The
    model's scores are compared to cs.SCORE_REL: a state rebuilt with one
    prefill (after a restart or an eviction) equals the incrementally stepped
    one to float rounding and a quantization step, not bit for bit
    (docs/MODEL.md)."""
    return {k: v for k, v in copy.items() if k not in ("created_at", "copy_id", "source_topic")}


def assert_same_copy(got, want):
    got, want = comparable(got), comparable(want)
    for key in ("items", "reasons"):
        cs.assert_same_ranked(got.pop(key), want.pop(key))
    assert got == want


@pytest.mark.parametrize("strategy,guarantee", [("affinity", "at_least_once"),
                                                ("transformer", "at_least_once"),
                                                ("affinity", "exactly_once"),
                                                ("transformer", "exactly_once")])
def test_killed_mid_stream_and_restarted_matches_a_clean_run(env, redis_client, tmp_path,
                                                             strategy, guarantee):
    opts = dict(COPYSTREAM_COPY_MIN__INTERVAL__S=60,
                COPYSTREAM_BATCH_MAX__EVENTS=20,
                COPYSTREAM_PROCESSING_GUARANTEE=guarantee,
                COPYSTREAM_KAFKA_CONSUMER_SESSION_TIMEOUT_MS=2000,
                COPYSTREAM_KAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS=500)
    if strategy == "transformer":
        # A small window and a small state cache: states are rebuilt at window
        # boundaries, after evictions and after every restart, and the copies
        # must still be exactly those of the clean run.
        model = tmp_path / "model.bin"
        subprocess.run([str(env["bin"].parent / "tools" / "mkmodel"), str(model),
                        "--sample-catalog", "--seed", "5", "--dim", "16", "--layers", "2",
                        "--heads", "2", "--window", "16"], check=True)
        opts.update(COPYSTREAM_MODEL_PATH=model, COPYSTREAM_MODEL_KV__CACHE__MB=1)
    killed, clean = cs.Deployment(env, **opts), cs.Deployment(env, **opts)
    # The same transactional id across restarts, as an orchestrator would give
    # it: each restart aborts at once what the killed process left open.
    for d in (killed, clean):
        d.vars["COPYSTREAM_PROCESSING_TRANSACTIONAL__ID"] = f"tx-{d.tag}"
    try:
        for d in (killed, clean):
            d.run(["loadgen", "--catalog", "--count", str(EVENTS), "--users", "300",
                   "--seed", "7", "--start-ms", str(T0), "--quiet"])

        # Kill at progress points, not at times, so that every kill lands
        # mid-stream however fast the machine is: somewhere around 15 %, 45 %
        # and 75 % of the input, wherever a batch happens to be then.
        rnd = random.Random(2026)
        progress = []
        for frac in (0.15, 0.45, 0.75):
            target = int(EVENTS * (frac + rnd.uniform(-0.05, 0.05)))
            p = killed.start()
            deadline = time.time() + 90
            while counted_events(killed, redis_client) < target and time.time() < deadline:
                assert p.poll() is None, "the service stopped:\n" + killed.log(p)
                time.sleep(0.02)
            p.kill()
            p.wait()
            progress.append(counted_events(killed, redis_client))
        # The kills landed mid-stream: work was left for the restart to do.
        assert progress[-1] < EVENTS, progress
        killed.run_until_idle()
        clean.run_until_idle()

        assert counted_events(clean, redis_client) == EVENTS
        assert counted_events(killed, redis_client) == EVENTS
        assert state_without_versions(killed, redis_client) == \
            state_without_versions(clean, redis_client)
        # The bandit's shared statistics count every copy once, however often
        # its event was redelivered: exactly the clean run's.
        assert clean.bandit_stats(redis_client), "no bandit statistics"
        assert killed.bandit_stats(redis_client) == clean.bandit_stats(redis_client)
        # Every outbox copy was deleted once its offset was committed, including
        # those a killed instance left between its commit and its deletions.
        assert killed.outbox_index_entries(redis_client) == 0
        assert clean.outbox_index_entries(redis_client) == 0

        clean_copies = {c["source_event_id"]: c for c in clean.copies()}
        assert clean_copies, "the clean run made no copies"
        assert strategy in {c["strategy"] for c in clean_copies.values()}
        killed_copies = {}
        republished = 0
        for c in killed.copies():
            first = killed_copies.setdefault(c["source_event_id"], c)
            republished += c is not first
            # A republished copy is the outbox copy, byte for byte: same creation time too.
            assert c == first
        if guarantee == "exactly_once":
            assert republished == 0, f"{republished} copies seen twice by a read_committed reader"
        assert set(killed_copies) == set(clean_copies)
        for event_id, c in killed_copies.items():
            assert_same_copy(c, clean_copies[event_id])
    finally:
        killed.stop_all()
        clean.stop_all()
