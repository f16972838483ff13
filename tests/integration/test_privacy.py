"""Privacy on a real broker and Redis: `copystream forget USER` -- and the same as
a control message -- leaves no key, field, member or value naming the user
anywhere under the deployment's prefix, writes tombstones to the compacted
topics keyed by user, and the running service starts the user afresh;
opt_out and opt_in control messages stop and restart copy.
"""

import time

from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                  NewTopic)

import cs

USER = "user-zoe-7Q"   # distinctive, so that finding it anywhere means something
OTHER = "user-ann-3K"
T0 = 1_700_000_000_000

CATALOG = [cs.catalog_item(f"item-{i}", {"en-US": f"Item {i}", "zh-CN": f"商品 {i}"}, "gadgets",
                           [("shiny", {"en-US": "shiny finish", "zh-CN": "亮面"})],
                           price_micros=(10 + i) * 1_000_000)
           for i in range(6)]


def everything(d, redis_client):
    """Every key of the deployment with every byte string it holds: names,
    fields, values, members."""
    out = {}
    for key in d.keys(redis_client):
        kind = redis_client.type(key)
        if kind == b"hash":
            held = [x for kv in redis_client.hgetall(key).items() for x in kv]
        elif kind == b"zset":
            held = redis_client.zrange(key, 0, -1)
        elif kind == b"set":
            held = list(redis_client.smembers(key))
        elif kind == b"list":
            held = redis_client.lrange(key, 0, -1)
        else:
            held = [redis_client.get(key) or b""]
        out[key] = held
    return out


def mentions(d, redis_client, user):
    needle = user.encode()
    return [k for k, held in everything(d, redis_client).items()
            if needle in k or any(needle in x for x in held)]


def activity(user, ts, prefix, locale="en-US"):
    return [cs.click(f"{prefix}1", user, ts, "view", "item-1", "gadgets", locale=locale),
            cs.click(f"{prefix}2", user, ts + 1000, "view", "item-2", "gadgets"),
            cs.click(f"{prefix}3", user, ts + 2000, "add_to_cart", "item-3", "gadgets")]


def test_forget_leaves_nothing_of_the_user_and_writes_tombstones(env, redis_client):
    d = cs.Deployment(env, COPYSTREAM_COPY_MIN__INTERVAL__S=0,
                      COPYSTREAM_INTENT_CART__REMINDER_DELAY__S=86400)
    profiles = f"profiles-{d.tag}"
    d.vars["COPYSTREAM_PRIVACY_TOMBSTONE__TOPICS"] = profiles
    admin = AdminClient({"bootstrap.servers": env["bootstrap"]})
    # A compacted topic of another system, keyed by user, and copystream's own
    # copy topic made compacted: both must get a tombstone; the clickstream,
    # which is not compacted, none.
    for f in admin.create_topics([NewTopic(profiles, 1, 1,
                                           config={"cleanup.policy": "compact"})]).values():
        f.result()
    compact = ConfigEntry("cleanup.policy", "compact",
                          incremental_operation=AlterConfigOpType.SET)
    for f in admin.incremental_alter_configs([ConfigResource(
            ConfigResource.Type.TOPIC, d.topics["copy"], incremental_configs=[compact])]).values():
        f.result()
    try:
        d.producer.produce(profiles, key=USER, value=b'{"tier": "gold"}')
        d.flush()
        d.send_catalog(CATALOG)
        now = int(time.time() * 1000)
        d.send_clicks(activity(USER, now, "z") + activity(OTHER, now, "a"))
        p = d.start()
        cs.wait_for("both users' carts scheduled", lambda: len(d.due_entries(redis_client)) == 2)
        copies = cs.wait_for("copies", lambda: [c for c in d.copies() if c["user_id"] == USER])
        rx = {"reaction_id": "r1", "copy_id": copies[0]["copy_id"], "user_id": USER,
              "type": "CLICK", "item_id": None, "value": None, "timestamp": now + 5000}
        d.produce("reactions", USER, cs.frame(4, d.reaction_schema, rx))
        d.flush()
        cs.wait_for("the reaction applied", lambda: d.user_hash(redis_client, USER).get(b"r.click"))
        before = mentions(d, redis_client, USER)
        # The user is in their hash, the due set, the watcher sets of the items.
        assert any(b":due:" in k for k in before) and any(b":watch:" in k for k in before)
        assert any(b":u:{" in k for k in before)

        out = d.run(["forget", USER]).stdout
        assert out.startswith(f"forgot {USER}: ") and "tombstones in 2 topics" in out, out
        assert profiles in out and d.topics["copy"] in out
        cs.wait_for("the service's own forget",
                    lambda: f"forget of user {USER} applied" in d.log(p))

        assert mentions(d, redis_client, USER) == []
        # Nobody else lost anything.
        assert d.user_hash(redis_client, OTHER)[b"n.add_to_cart"] == b"1"
        assert [m["user_id"] for m, _ in d.due_entries(redis_client)] == [OTHER]
        assert any(OTHER.encode() in x for k, held in everything(d, redis_client).items()
                   if b":watch:" in k for x in held)
        # Tombstones where the topic is compacted and keyed by user, nowhere else.
        for topic in (profiles, d.topics["copy"]):
            last = [m for m in d.read_topic(topic) if m.key() == USER.encode()][-1]
            assert last.value() is None, topic
        assert all(m.value() is not None for m in d.read_topic("clickstream"))

        # The service holds nothing of the user any more: a new event starts afresh.
        d.send_clicks([cs.click("z9", USER, now + 60_000, "view", "item-4", "gadgets")])
        cs.wait_for("the user's new state", lambda: d.user_hash(redis_client, USER).get(b"n.view"))
        fresh = d.user_hash(redis_client, USER)
        assert fresh[b"n.view"] == b"1" and b"n.add_to_cart" not in fresh and b"r.click" not in fresh
        p.terminate()
        assert p.wait(timeout=60) == 0
    finally:
        d.stop_all()


def test_control_messages_forget_and_switch_consent(env, redis_client):
    d = cs.Deployment(env, COPYSTREAM_COPY_MIN__INTERVAL__S=0)
    amy, bo = "user-amy-9Z", "user-bo-4X"
    try:
        d.send_catalog(CATALOG)
        now = int(time.time() * 1000)
        d.send_clicks(activity(amy, now, "m"))
        p = d.start()
        cs.wait_for("amy's events", lambda: d.user_hash(redis_client, amy).get(b"n.add_to_cart"))
        d.send_control({"type": "forget", "user_id": amy})
        cs.wait_for("amy forgotten", lambda: not mentions(d, redis_client, amy))

        def copies_of(user):
            return [c for c in d.copies() if c["user_id"] == user]

        d.send_clicks([cs.click("b1", bo, T0, "view", "item-1", "gadgets")])
        cs.wait_for("bo's first copy", lambda: len(copies_of(bo)) == 1)
        d.send_control({"type": "opt_out", "user_id": bo})
        cs.wait_for("bo's opt-out", lambda: d.user_hash(redis_client, bo).get(b"ns"))
        d.send_clicks([cs.click("b2", bo, T0 + 1000, "view", "item-2", "gadgets")])
        cs.wait_for("b2 applied", lambda: d.user_hash(redis_client, bo).get(b"n.view") == b"2")
        time.sleep(1)
        assert len(copies_of(bo)) == 1
        d.send_control({"type": "opt_in", "user_id": bo})
        cs.wait_for("bo's opt-in", lambda: b"ns" not in d.user_hash(redis_client, bo))
        d.send_clicks([cs.click("b3", bo, T0 + 2000, "view", "item-3", "gadgets")])
        cs.wait_for("bo's copy after the opt-in", lambda: len(copies_of(bo)) == 2)
        assert copies_of(bo)[1]["source_event_id"] == "b3"
        # A malformed request is counted and skipped, and the service goes on.
        d.send_control({"type": "erase", "user_id": bo})
        d.send_clicks([cs.click("b4", bo, T0 + 3000, "view", "item-4", "gadgets")])
        cs.wait_for("b4's copy", lambda: len(copies_of(bo)) == 3)
        log = d.log(p)
        for what in (f"forget of user {amy} applied", f"opt_out of user {bo} applied",
                     f"opt_in of user {bo} applied", "type must be forget, opt_out or opt_in"):
            assert what in log, what
        p.terminate()
        assert p.wait(timeout=60) == 0
    finally:
        d.stop_all()

    # `copystream consent` does the same without a running service.
    d2 = cs.Deployment(env, COPYSTREAM_COPY_MIN__INTERVAL__S=0)
    try:
        assert d2.run(["consent", bo, "opt_out"]).stdout.strip() == f"{bo}: opt_out recorded"
        assert d2.user_hash(redis_client, bo)[b"ns"]
        d2.send_catalog(CATALOG)
        d2.send_clicks([cs.click("c1", bo, T0, "view", "item-1", "gadgets")])
        d2.run_until_idle()
        assert d2.copies() == []
        assert d2.run(["consent", bo, "opt_in"]).returncode == 0
        assert b"ns" not in d2.user_hash(redis_client, bo)
        assert d2.run(["consent", bo, "maybe"], check=False).returncode == 2
    finally:
        d2.stop_all()
