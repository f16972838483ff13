"""The service end to end on a real Kafka broker and Redis: a known clickstream in
gives the expected user state and copies out; poison goes to the dead-letter
topic while the partition keeps flowing; writers with older and newer schemas
are understood; a bad config fails at start-up with the key and the reason.
"""

import struct

import pytest

import cs

T0 = 1_700_000_000_000  # event time of the first event, ms

HD = ("hd_screen", {"zh-CN": "高清屏幕", "en-US": "high-definition screen"})
CPU = ("fast_cpu", {"zh-CN": "高性能处理器", "en-US": "high-performance processor"})
BATTERY = ("long_battery", {"zh-CN": "长续航", "en-US": "long battery life"})

CATALOG = [
    cs.catalog_item("phone-a", {"zh-CN": "星河 A1 手机", "en-US": "Star A1 Phone"}, "phones",
                    [HD, CPU], price_micros=2999_000000),
    cs.catalog_item("phone-b", {"zh-CN": "星河 B2 手机", "en-US": "Star B2 Phone"}, "phones",
                    [HD, BATTERY], price_micros=3999_000000),
    cs.catalog_item("phone-c", {"zh-CN": "星河 C3 手机", "en-US": "Star C3 Phone"}, "phones",
                    [BATTERY], price_micros=1999_000000),
    cs.catalog_item("phone-d", {"zh-CN": "星河 D4 手机", "en-US": "Star D4 Phone"}, "phones",
                    [HD, CPU], price_micros=4999_000000, available=False),
    cs.catalog_item("watch-a", {"zh-CN": "星河 手表", "en-US": "Star Watch"}, "watches",
                    [BATTERY], price_micros=999_000000),
]


@pytest.fixture
def deployment(env):
    d = cs.Deployment(env, COPYSTREAM_COPY_MIN__INTERVAL__S=600,
                      COPYSTREAM_AFFINITY_HALF__LIFE__S=1e9)
    yield d
    d.stop_all()


def alice_and_bob():
    s = 1000
    return [
        cs.click("a1", "alice", T0, "view", "phone-a", "phones", locale="zh-CN"),
        cs.click("a2", "alice", T0 + 60 * s, "add_to_cart", "phone-b", "phones"),
        cs.click("a3", "alice", T0 + 120 * s, "purchase", "phone-b", "phones"),
        cs.click("a4", "alice", T0 + 700 * s, "view", "watch-a", "watches"),
        # The producer retried: the same event again at a new offset.
        cs.click("a4", "alice", T0 + 700 * s, "view", "watch-a", "watches"),
        cs.click("b1", "bob", T0, "view", "phone-c", "phones", locale="en-US"),
    ]


def test_known_clickstream_gives_expected_state_and_copies(deployment, redis_client):
    d = deployment
    d.send_catalog(CATALOG)
    d.send_clicks(alice_and_bob())
    d.run_until_idle()

    alice = d.user_hash(redis_client, "alice")
    assert alice[b"n.view"] == b"2"          # the retried a4 counted once
    assert alice[b"n.add_to_cart"] == b"1"
    assert alice[b"n.purchase"] == b"1"
    assert alice[b"dup"] == b"1"
    assert alice[b"loc"] == b"zh-CN"
    assert alice[b"t0"] == str(T0).encode()
    assert alice[b"t1"] == str(T0 + 700_000).encode()
    assert alice[b"lc"] == str(T0 + 700_000).encode()  # the second copy's event
    assert cs.decode_seq(alice[b"seq"]) == [
        (cs.h64("phone-a"), T0 // 1000, "view"),
        (cs.h64("phone-b"), T0 // 1000 + 60, "add_to_cart"),
        (cs.h64("phone-b"), T0 // 1000 + 120, "purchase"),
        (cs.h64("watch-a"), T0 // 1000 + 700, "view"),
    ]
    assert cs.decode_u64_list(alice[b"buy"]) == [cs.h64("phone-b")]
    # Affinities with weights view 1, cart 3, purchase 5 and (practically) no decay.
    _, cats = cs.decode_affinities(alice[b"cat"])
    assert cats == pytest.approx({cs.h64("phones"): 9.0, cs.h64("watches"): 1.0}, rel=1e-5)
    _, attrs = cs.decode_affinities(alice[b"attr"])
    assert attrs == pytest.approx({cs.h64("hd_screen"): 9.0, cs.h64("fast_cpu"): 1.0,
                                   cs.h64("long_battery"): 9.0}, rel=1e-5)
    # No outbox copy is left once the offsets covering it are committed.
    assert not [f for f in alice if f.startswith(b"o.")]

    copies = d.copies()
    by_user = {}
    for c in copies:
        by_user.setdefault(c["user_id"], []).append(c)
    assert sorted(by_user) == ["alice", "bob"]
    # a1 triggers; a2 and a3 fall within the 600 s minimum interval; a4 triggers.
    assert [c["source_event_id"] for c in by_user["alice"]] == ["a1", "a4"]
    first, second = by_user["alice"]
    assert first["locale"] == "zh-CN" and first["strategy"] == "affinity"
    promoted = [i["item_id"] for i in first["items"]]
    # phone-b shares the attribute alice liked and the category; phone-d is out of stock
    # and phone-a is the item she is looking at.
    assert promoted[0] == "phone-b"
    assert "phone-d" not in promoted and "phone-a" not in promoted
    assert [r["text"] for r in first["reasons"] if r["code"] == "attribute_match"][0] == "高清屏幕"
    assert "星河 B2 手机" in first["text"] and "{" not in first["text"]
    assert first["copy_id"] == f"{d.topics['clickstream']}:{first['source_partition']}:" \
                               f"{first['source_offset']}"
    # After the purchase, phone-b is never promoted again.
    assert "phone-b" not in [i["item_id"] for i in second["items"]]
    assert "watch-a" not in [i["item_id"] for i in second["items"]]
    (bob,) = by_user["bob"]
    assert bob["locale"] == "en-US"
    assert bob["source_event_id"] == "b1"
    assert "long battery life" in [r["text"] for r in bob["reasons"]]
    # Marketing systems key by user: every copy's Kafka key is its user id.
    assert {m.key() for m in d.read_topic("copy")} == {b"alice", b"bob"}


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_poisoned_messages_are_dead_lettered_and_later_events_still_count(deployment,
                                                                           redis_client,
                                                                           guarantee):
    d = deployment
    d.send_catalog(CATALOG)
    good = cs.frame(1, d.click_schema, cs.click("g1", "carol", T0, "view", "phone-a", "phones"))
    later = cs.frame(1, d.click_schema,
                     cs.click("g2", "carol", T0 + 1000, "click", "phone-c", "phones"))
    poison = {
        "bad-framing": b"\x07garbage",
        "unknown-schema": b"\x00\x00\x00\x03\xe7" + good[5:],
        "malformed": good[:5] + b"\x02\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
        "oversized": good + b"\x00" * 5000,
        "empty": b"",
        "incompatible-schema": cs.frame(2, d.catalog_schema, CATALOG[0]),
    }
    d.produce("clickstream", "carol", good)
    for value in poison.values():
        d.produce("clickstream", "carol", value)
    d.produce("clickstream", "carol", later)
    d.flush()
    d.run_until_idle(COPYSTREAM_INPUT_MAX__BYTES=4096, COPYSTREAM_PROCESSING_GUARANTEE=guarantee)

    dead = d.read_topic("dlq")
    assert len(dead) == len(poison)
    source = d.read_topic("clickstream")
    offsets = {m.value(): (m.partition(), m.offset()) for m in source}
    seen = {}
    for m in dead:
        h = {k: v.decode() for k, v in m.headers()}
        seen[h["copystream.error"]] = h
        assert m.key() == b"carol"
        assert h["copystream.source.topic"] == d.topics["clickstream"]
        # Headers point at exactly the message that was dead-lettered, which is kept whole.
        assert (int(h["copystream.source.partition"]),
                int(h["copystream.source.offset"])) == offsets[m.value() or b""]
        assert h["copystream.error.detail"]
    assert set(seen) == set(poison)
    carol = d.user_hash(redis_client, "carol")
    assert carol[b"n.view"] == b"1" and carol[b"n.click"] == b"1"


def test_older_and_newer_writer_schemas_decode_over_the_wire(env, redis_client, tmp_path):
    import json
    current = json.loads((cs.SCHEMAS / "ClickEvent.avsc").read_text())
    older = dict(current, fields=[f for f in current["fields"]
                                  if f["name"] not in ("locale", "session_id", "currency")])
    newer = dict(current, fields=current["fields"] + [
        {"name": "referrer", "type": ["null", "string"], "default": None},
        {"name": "device", "type": "string"}])
    (tmp_path / "old.avsc").write_text(json.dumps(older))
    (tmp_path / "new.avsc").write_text(json.dumps(newer))
    d = cs.Deployment(env, COPYSTREAM_SCHEMA_ID_101=tmp_path / "old.avsc",
                      COPYSTREAM_SCHEMA_ID_102=tmp_path / "new.avsc")
    try:
        d.send_catalog(CATALOG)
        old_event = {k: v for k, v in cs.click("o1", "dave", T0, "view", "phone-a",
                                                "phones").items()
                     if k not in ("locale", "session_id", "currency")}
        new_event = dict(cs.click("n1", "dave", T0 + 1000, "purchase", "phone-c", "phones",
                                  locale="en-US"), referrer="ad", device="ios")
        d.send_clicks([old_event], schema_id=101, schema=cs.fastavro.parse_schema(older))
        d.send_clicks([new_event], schema_id=102, schema=cs.fastavro.parse_schema(newer))
        d.run_until_idle()
        dave = d.user_hash(redis_client, "dave")
        assert dave[b"n.view"] == b"1" and dave[b"n.purchase"] == b"1"
        assert dave[b"loc"] == b"en-US"  # from the newer writer's event
        assert d.read_topic("dlq") == []
    finally:
        d.stop_all()


def test_bad_config_fails_at_startup_naming_the_key(env, tmp_path):
    d = cs.Deployment(env)
    bad = tmp_path / "bad.conf"
    bad.write_text("[redis]\nport = 70000\n")
    p = d.run(["run", "-c", str(bad)], check=False, timeout=30)
    assert p.returncode == 2
    assert "redis.port" in p.stderr and "65535" in p.stderr and "bad.conf:2" in p.stderr
    p = d.run(["run"], check=False, timeout=30, COPYSTREAM_COPY_LOCALES="fr-FR")
    assert p.returncode == 2 and "copy.default_locale" in p.stderr
    p = d.run(["run"], check=False, timeout=30, COPYSTREAM_KAFKA_NO_SUCH_PROPERTY="1")
    assert p.returncode == 2 and "kafka.no.such.property" in p.stderr


def test_redis_key_of_a_user_is_hash_tagged(deployment, redis_client):
    d = deployment
    d.send_catalog(CATALOG[:1])
    d.send_clicks([cs.click("e", "erin", T0, "view", "phone-a", "phones")])
    d.run_until_idle()
    keys = d.user_keys(redis_client)
    assert keys == [f"{d.prefix}:u:{{erin}}".encode()]
    ttl = redis_client.ttl(keys[0])
    assert 0 < ttl <= 30 * 86400


def test_reactions_update_the_users_state_once(deployment, redis_client):
    d = deployment
    d.send_catalog(CATALOG)
    d.send_clicks([cs.click("f1", "frank", T0, "view", "phone-a", "phones")])

    def reaction(rid, rtype, ts):
        return {"reaction_id": rid, "copy_id": "clickstream:0:0", "user_id": "frank",
                "type": rtype, "item_id": "phone-b", "value": None, "timestamp": ts}

    for r in [reaction("r1", "IMPRESSION", T0 + 10), reaction("r2", "CLICK", T0 + 20),
              reaction("r2", "CLICK", T0 + 20),  # an upstream duplicate
              reaction("r3", "DISMISS", T0 + 30)]:
        d.produce("reactions", "frank", cs.frame(4, d.reaction_schema, r))
    d.flush()
    d.run_until_idle()
    frank = d.user_hash(redis_client, "frank")
    assert frank[b"r.impression"] == b"1"
    assert frank[b"r.click"] == b"1"
    assert frank[b"r.dismiss"] == b"1"
    assert frank[b"n.view"] == b"1"
    assert frank[b"dup"] == b"1"
    assert [f for f in frank if f.startswith(b"w.r.")], "reactions watermark"
    assert d.read_topic("dlq") == []
