"""Replay and rebuild-state for operators (docs/OPERATIONS.md): a replayed time range gives the
live run's copies of that range, and nothing of the live deployment moves -- not the group's
offsets, not a Redis key, not the copy or dead-letter topics; a dry run publishes and writes
nothing; state rebuilt into a new prefix equals the live state, and the service switched over
to it carries on exactly as it would have on the old one.
"""

import json
import os
import pty
import random
import re
import select
import subprocess
import time

import pytest

import cs

T0 = 1_700_000_000_000          # event time of the first event
STEP_MS = 7_000                 # event time between consecutive events (all users)
USERS = 24
PER_PHASE = 240

# Message timestamps (Kafka's time index, which --from and --to go by): three phases ten
# minutes apart, the last one ending ten minutes ago -- all within the test broker's retention
# (log.retention.ms is an hour: older messages would be deleted under the test's feet). The
# times are taken when this module's first test starts. Phase 1 is the replayed range.
PHASE_MS = 600_000


class Clock:
    base = None

    @classmethod
    def start(cls):
        if cls.base is None:
            cls.base = (int(time.time() * 1000) // 1000) * 1000 - 3 * PHASE_MS - 600_000
        return cls.base


def window():
    """--from and --to of the replayed phase."""
    base = Clock.start()
    return base + PHASE_MS, base + 2 * PHASE_MS


def catalog():
    items = []
    cats = ["phone", "laptop", "audio"]
    attrs = [("hd", {"zh-CN": "高清屏幕", "en-US": "high-definition screen"}),
             ("light", {"zh-CN": "轻薄", "en-US": "lightweight"}),
             ("battery", {"zh-CN": "长续航", "en-US": "long battery life"}),
             ("noise", {"zh-CN": "降噪", "en-US": "noise cancelling"})]
    for i in range(12):
        items.append(cs.catalog_item(
            f"i{i}", {"zh-CN": f"商品{i}", "en-US": f"Item {i}"}, cats[i % 3],
            [attrs[i % 4], attrs[(i + 1) % 4]], price_micros=(100 + i) * 1_000_000))
    return items


def clickstream(phases=3):
    """phases x PER_PHASE events, their message timestamps, and each event's phase."""
    rnd = random.Random(11)
    types = ["view", "view", "click", "add_to_cart", "purchase", "favorite"]
    events, stamps, phase_of = [], [], {}
    for k in range(phases * PER_PHASE):
        phase = k // PER_PHASE
        user = f"u{rnd.randrange(USERS)}"
        e = cs.click(f"e{k}", user, T0 + k * STEP_MS, rnd.choice(types), f"i{rnd.randrange(12)}",
                     locale="zh-CN" if int(user[1:]) % 2 else "en-US")
        events.append(e)
        stamps.append(Clock.start() + phase * PHASE_MS + (k % PER_PHASE) * 100)
        phase_of[e["event_id"]] = phase
    return events, stamps, phase_of


def send_reactions(d, phase, n=6):
    for j in range(n):
        r = {"reaction_id": f"r{phase}-{j}", "copy_id": None, "user_id": f"u{j}",
             "type": ["IMPRESSION", "CLICK", "DISMISS"][j % 3], "item_id": None, "value": None,
             "timestamp": T0 + phase * 1000 + j}
        d.produce("reactions", r["user_id"], cs.frame(4, d.reaction_schema, r),
                  timestamp=Clock.start() + phase * PHASE_MS + 50_000 + j)
    d.flush()


def without_created_at(copy):
    return {k: v for k, v in copy.items() if k != "created_at"}


def redis_dump(redis_client, pattern="*"):
    """Every key matching pattern with its serialized value (DUMP)."""
    return {k: redis_client.dump(k) for k in redis_client.scan_iter(match=pattern, count=1000)}


def run_live(env, **config):
    """A deployment whose live service processed three phases of clickstream (with reactions
    and a poison message in the replayed phase), its copies by source event, and those of the
    replayed phase."""
    d = cs.Deployment(env, **config)
    d.send_catalog(catalog())
    events, stamps, phase_of = clickstream()
    for phase in range(3):
        lo, hi = phase * PER_PHASE, (phase + 1) * PER_PHASE
        d.send_clicks(events[lo:hi], timestamps=stamps[lo:hi])
        send_reactions(d, phase)
    d.produce("clickstream", "u1", b"not avro", timestamp=window()[0] + 1000)
    d.flush()
    d.run_until_idle()
    copies = {}
    for c in d.copies():
        assert c["source_event_id"] not in copies, "a clean run publishes each copy once"
        copies[c["source_event_id"]] = c
    in_range = {e: c for e, c in copies.items() if phase_of[e] == 1}
    assert len(in_range) >= 20, "the replayed phase must have copies to compare"
    return d, copies, in_range


def replay_to_topic(d, *args):
    """Runs a replay of the window into a topic of its own; returns the process and the copies
    published there, by source event (each once)."""
    out = f"copy-replay-{d.tag}"
    d.create_topic(out)
    start, end = window()
    p = d.run(["replay", "--from", str(start), "--to", str(end), "--output-topic", out, *args],
              timeout=180)
    got = {}
    for c in d.copies(out):
        assert c["source_event_id"] not in got, "one copy per event"
        got[c["source_event_id"]] = c
    return p, out, got


@pytest.fixture(scope="module")
def live(env):
    d, copies, in_range = run_live(env)
    try:
        yield d, copies, in_range
    finally:
        d.stop_all()


def test_replay_to_another_topic_gives_the_live_copies_of_the_range_and_moves_nothing_live(
        live, redis_client):
    d, _, want = live
    committed = d.committed(d.group)
    assert all(o > 0 for (t, _), o in committed.items() if t == d.topics["clickstream"])
    live_keys = redis_dump(redis_client, f"{d.prefix}:*")
    copy_end, dlq_end = d.end_offsets("copy"), d.end_offsets("dlq")

    p, out, got = replay_to_topic(d)

    assert set(got) == set(want), p.stderr[-3000:]
    for event_id, c in got.items():
        # Everything the copy says -- copy id, source, text, items, scores, reasons,
        # template, variant, strategy -- but the time it was made.
        assert without_created_at(c) == without_created_at(want[event_id])
    assert f"copies published to {out}: {len(want)}" in p.stdout
    assert "100.0% done" in p.stderr, "plain progress lines when stderr is not a terminal"

    # Nothing live moved: the group's offsets, the live keys, the live output topics.
    assert d.committed(d.group) == committed
    assert redis_dump(redis_client, f"{d.prefix}:*") == live_keys
    assert d.end_offsets("copy") == copy_end
    assert d.end_offsets("dlq") == dlq_end, "bad input is not dead-lettered again"
    # The scratch state is gone.
    assert list(redis_client.scan_iter(match=f"{d.prefix}-replay-*")) == []
    # Copies never go into an input topic.
    refused = d.run(["replay", "--from", str(window()[0]), "--output-topic",
                     d.topics["clickstream"]], check=False)
    assert refused.returncode == 2 and "topic.clickstream" in refused.stderr


def test_replay_dry_run_publishes_nothing_commits_nothing_and_changes_no_redis_key(
        live, redis_client):
    d, _, want = live
    everything = redis_dump(redis_client)
    ends = {t: d.end_offsets(t) for t in ("copy", "dlq", "clickstream")}

    start, end = window()
    p = d.run(["replay", "--from", str(start), "--to", str(end), "--dry-run", "--sample", "3"],
              timeout=180)

    assert redis_dump(redis_client) == everything
    assert {t: d.end_offsets(t) for t in ends} == ends
    m = re.search(r"copies that would be published to (\S+): (\d+)", p.stdout)
    assert m and m[1] == d.topics["copy"] and int(m[2]) == len(want), p.stdout
    assert "the first 3:" in p.stdout
    shown = re.findall(r"source=\S+ \(event (e\d+)\)", p.stdout)
    assert len(shown) == 3 and set(shown) <= set(want)
    locales = dict(re.findall(r"(zh-CN|en-US)=(\d+)", p.stdout.split("by locale:")[1]
                              .split("\n")[0]))
    assert sum(int(n) for n in locales.values()) == len(want)
    group = re.search(r"group (\S+),", p.stderr)[1]
    assert group != d.group and group.startswith(d.group + "-replay-")
    assert all(o < 0 for o in d.committed(group).values()), "a dry run commits nothing"

    # Without the warm-up the users' state at --from is empty, and the copies differ: the
    # warm-up is what makes the replay equal the live run.
    cold = d.run(["replay", "--from", str(start), "--to", str(end), "--dry-run",
                  "--state-from", str(start)], timeout=180)
    n_cold = int(re.search(r"copies that would be published to \S+: (\d+)", cold.stdout)[1])
    assert n_cold != len(want)


def test_replay_draws_a_progress_bar_on_a_terminal(live, env):
    d, _, _ = live
    master, slave = pty.openpty()
    p = subprocess.Popen([str(env["bin"]), "replay", "--from", str(window()[0]), "--dry-run",
                          "--sample", "0"], cwd=env["root"], env=d.process_env(),
                         stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    deadline = time.time() + 120
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if not ready:
            if p.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.wait(timeout=60) == 0
    text = out.decode(errors="replace")
    assert "\r" in text
    bars = re.findall(r"replay \[[#.]{30}\] +(\d+\.\d)%  (\d+)/(\d+)  \d+/s  ETA (\S+)", text)
    assert bars, text[-2000:]
    assert bars[-1][0] == "100.0" and bars[-1][1] == bars[-1][2]


def test_replay_with_the_model_gives_the_live_copies_of_the_range(env, tmp_path):
    items = tmp_path / "items.json"
    items.write_text(json.dumps({it["item_id"]: [a["id"] for a in it["attributes"]]
                                 for it in catalog()}))
    model = tmp_path / "model.bin"
    subprocess.run([str(env["bin"].parent / "tools" / "mkmodel"), str(model), "--items",
                    str(items), "--seed", "3", "--dim", "16", "--layers", "2", "--heads", "2",
                    "--window", "32"], check=True)
    d, _, want = run_live(env, COPYSTREAM_MODEL_PATH=model)
    try:
        assert "transformer" in {c["strategy"] for c in want.values()}
        p, _, got = replay_to_topic(d)
        assert set(got) == set(want), p.stderr[-3000:]
        for event_id, c in got.items():
            # The model's states are stepped in other batches than the live run's, which
            # moves scores by float rounding and a quantization step (docs/MODEL.md): they
            # are compared to cs.SCORE_REL.
            g, w = without_created_at(c), without_created_at(want[event_id])
            for key in ("items", "reasons"):
                cs.assert_same_ranked(g.pop(key), w.pop(key))
            assert g == w
    finally:
        d.stop_all()


def state_of(d, redis_client, prefix=None):
    """Every user's hash under prefix (default: the deployment's), without the CAS version
    and without the records of copies made ("cp", which rebuild-state, making no copies,
    does not recreate: docs/OPERATIONS.md). The recently seen ids are compared as a set:
    their order is the order in which the clickstream and reactions topics happened to be
    interleaved, which Kafka does not fix between two reads."""
    prefix = prefix or d.prefix
    out = {}
    for key in redis_client.scan_iter(match=f"{prefix}:u:*".encode(), count=1000):
        user = key.decode().split("{", 1)[1].rstrip("}")
        h = {f: v for f, v in redis_client.hgetall(key).items() if f not in (b"v", b"cp")}
        if b"seen" in h:
            h[b"seen"] = sorted(cs.decode_seen(h[b"seen"]))
        out[user] = h
    return out


def test_rebuilt_state_equals_the_live_state_and_the_service_switched_to_it_carries_on(
        env, redis_client):
    d = cs.Deployment(env)
    new = f"{d.prefix}-rebuilt"
    try:
        d.send_catalog(catalog())
        events, stamps, phase_of = clickstream()
        a, b, c = (slice(k * PER_PHASE, (k + 1) * PER_PHASE) for k in range(3))
        d.send_clicks(events[a], timestamps=stamps[a])
        send_reactions(d, 0)
        d.run_until_idle()
        after_a = state_of(d, redis_client)
        copies_a = d.end_offsets("copy")

        # Never into the live prefix.
        refused = d.run(["rebuild-state", "--from", "0", "--prefix", d.prefix], check=False)
        assert refused.returncode == 2 and "redis.key_prefix" in refused.stderr

        # Rebuild from the whole topic: the live state, to the field. The live group's
        # commits are only read.
        committed = d.committed(d.group)
        p = d.run(["rebuild-state", "--from", "0", "--prefix", new], timeout=180)
        assert state_of(d, redis_client, new) == after_a
        assert d.committed(d.group) == committed
        assert d.end_offsets("copy") == copies_a, "rebuild-state makes no copies"
        assert list(redis_client.scan_iter(match=f"{new}:outbox:*")) == []
        assert "state rebuilt under prefix" in p.stdout

        # The service goes on (on the old prefix); the rebuild stopped at the offsets it had
        # committed, and --continue catches up with what it did since.
        d.send_clicks(events[b], timestamps=stamps[b])
        send_reactions(d, 1)
        d.run_until_idle()
        assert state_of(d, redis_client, new) == after_a
        d.run(["rebuild-state", "--from", "0", "--prefix", new, "--continue"], timeout=180)
        assert state_of(d, redis_client, new) == state_of(d, redis_client)

        # Switch: the service on the new prefix processes phase 2.
        d.send_clicks(events[c], timestamps=stamps[c])
        copy_end = d.end_offsets("copy")
        d.run_until_idle(COPYSTREAM_REDIS_KEY__PREFIX=new)
        switched = [m for m in d.read_topic("copy") if m.offset() >= copy_end[m.partition()]]
        assert switched, "phase 2 made copies"
        # What the old prefix would have done: another group reads the whole input onto it
        # (phases 0 and 1 are applied there already, so only phase 2 changes anything).
        d.run_until_idle(COPYSTREAM_KAFKA_GROUP_ID=f"{d.group}-reference")
        assert state_of(d, redis_client, new) == state_of(d, redis_client)
        by_event = {}
        for copy in d.copies():
            if phase_of[copy["source_event_id"]] == 2:
                by_event.setdefault(copy["source_event_id"], []).append(
                    without_created_at(copy))
        assert len(by_event) == len(switched)
        for event_id, versions in by_event.items():
            assert len(versions) == 2 and versions[0] == versions[1], event_id
    finally:
        d.stop_all()
