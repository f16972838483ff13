"""Intents on a real broker and Redis: a browsing streak makes a recommendation,
a purchase a cross-sell naming it, a return a re-engagement; an item left in
the cart is reminded of after the delay -- even when the service was stopped
meanwhile, because the reminder waits in Redis -- unless it was bought; a
catalog price drop reaches the users who looked at the item, at most
max_watchers of them; a trigger produced twice makes one copy.
"""

import json
import time

import pytest

import cs

T0 = 1_700_000_000_000
MIN = 60_000

HD = ("hd_screen", {"zh-CN": "高清屏幕", "en-US": "high-definition screen"})
BATTERY = ("long_battery", {"zh-CN": "长续航", "en-US": "long battery life"})


def catalog(updated_at=1_700_000_000_000, phone_b_price=3999_000000):
    items = [
        cs.catalog_item("phone-a", {"zh-CN": "星河 A1 手机", "en-US": "Star A1 Phone"}, "phones",
                        [HD], price_micros=2999_000000),
        cs.catalog_item("phone-b", {"zh-CN": "星河 B2 手机", "en-US": "Star B2 Phone"}, "phones",
                        [HD, BATTERY], price_micros=phone_b_price),
        cs.catalog_item("phone-c", {"zh-CN": "星河 C3 手机", "en-US": "Star C3 Phone"}, "phones",
                        [BATTERY], price_micros=1999_000000),
        cs.catalog_item("case-a", {"zh-CN": "星河 手机壳", "en-US": "Star Phone Case"}, "cases",
                        [HD], price_micros=99_000000),
    ]
    for it in items:
        it["updated_at"] = updated_at
    return items


def deployment(env, **extra):
    opts = dict(COPYSTREAM_INTENT_RECOMMENDATION_STREAK=3, COPYSTREAM_COPY_MIN__INTERVAL__S=0)
    opts.update(extra)
    return cs.Deployment(env, **opts)


def by_event(copies):
    return {c["source_event_id"]: c for c in copies}


def test_streak_purchase_and_return_trigger_their_intents(env):
    d = deployment(env)
    try:
        d.send_catalog(catalog())
        d.send_clicks([
            cs.click("s1", "ann", T0, "view", "phone-a", "phones", locale="en-US"),
            cs.click("s2", "ann", T0 + MIN, "view", "case-a", "cases"),    # another category
            cs.click("s3", "ann", T0 + 2 * MIN, "view", "phone-c", "phones"),
            cs.click("s4", "ann", T0 + 3 * MIN, "view", "phone-b", "phones"),  # 3 phones: streak
            cs.click("s5", "ann", T0 + 4 * MIN, "purchase", "phone-b", "phones"),
            # Fifteen days later she is back.
            cs.click("s6", "ann", T0 + 15 * 86_400_000, "search", None, None),
        ])
        d.run_until_idle()
        copies = by_event(d.copies())
        assert sorted(copies) == ["s4", "s5", "s6"]
        assert copies["s4"]["intent"] == "recommendation"
        assert copies["s4"]["template_id"].startswith("recommendation.en-US.")
        cross = copies["s5"]
        assert cross["intent"] == "cross_sell"
        assert cross["template_id"].startswith("cross_sell.en-US.")
        assert "phone-b" not in [i["item_id"] for i in cross["items"]]  # bought: not again
        if cross["variant_id"] == "a":
            assert cross["text"].startswith("Thanks for buying Star B2 Phone!")
        assert copies["s6"]["intent"] == "re_engagement"
        assert "{" not in "".join(c["text"] for c in copies.values())
    finally:
        d.stop_all()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_cart_reminder_survives_a_restart_and_skips_what_was_bought(env, redis_client,
                                                                     guarantee):
    delay_s = 12
    d = deployment(env, COPYSTREAM_INTENT_CART__REMINDER_DELAY__S=delay_s,
                   COPYSTREAM_TRIGGER_SCAN__INTERVAL__MS=200,
                   COPYSTREAM_PROCESSING_GUARANTEE=guarantee)
    try:
        d.send_catalog(catalog())
        now = int(time.time() * 1000)
        d.send_clicks([
            cs.click("c1", "cora", now, "add_to_cart", "phone-b", "phones", locale="zh-CN"),
            cs.click("c2", "dan", now, "add_to_cart", "phone-c", "phones", locale="en-US"),
            cs.click("c3", "dan", now + 1000, "purchase", "phone-c", "phones"),
        ])
        # The service applies the carts and stops before anything is due.
        d.run_until_idle(idle_ms=500)
        assert time.time() * 1000 < now + delay_s * 1000, "too slow to test the restart"
        due = sorted((m["user_id"], m["item_id"], m["intent"], t) for m, t in
                     d.due_entries(redis_client))
        assert due == [("cora", "phone-b", "cart_reminder", now + delay_s * 1000),
                       ("dan", "phone-c", "cart_reminder", now + delay_s * 1000)]
        assert [c["intent"] for c in d.copies()] == ["cross_sell"]  # dan's purchase

        # Started again after the delay: the reminders come out of Redis.
        time.sleep(max(0.0, (now + delay_s * 1000) / 1000 - time.time()) + 0.2)
        p = d.start()
        reminders = cs.wait_for("the cart reminder", lambda: [
            c for c in d.copies() if c["intent"] == "cart_reminder"])
        cs.wait_for("the due set emptied", lambda: not d.due_entries(redis_client))
        time.sleep(1.5)  # dan's trigger was consumed too, and made nothing
        p.terminate()
        assert p.wait(timeout=60) == 0
        reminders = [c for c in d.copies() if c["intent"] == "cart_reminder"]
        assert len(reminders) == 1, reminders
        (r,) = reminders
        assert r["user_id"] == "cora" and r["locale"] == "zh-CN"
        assert [i["item_id"] for i in r["items"]] == ["phone-b"]
        assert r["strategy"] == "trigger"
        assert r["source_topic"] == d.topics["triggers"]
        assert r["copy_id"] == f"{d.topics['triggers']}:{r['source_partition']}:" \
                               f"{r['source_offset']}"
        assert r["source_event_id"] == f"cart_reminder:phone-b:{now + delay_s * 1000}"
        assert "星河 B2 手机" in r["text"]
        # Reasons from data: the cart item's attributes that she likes.
        assert {x["text"] for x in r["reasons"]} <= {"高清屏幕", "长续航"} and r["reasons"]
        # Its bandit statistics are the cart reminder's own.
        stats = d.bandit_stats(redis_client, "cart_reminder")
        assert sum(v for k, v in stats.items() if k.endswith(".sent")) == 1
    finally:
        d.stop_all()


def test_a_trigger_produced_twice_makes_one_copy(env, redis_client):
    """What a scanner that crashed between producing a trigger and removing it
    from Redis leaves behind: the same trigger twice on the topic."""
    d = deployment(env)
    try:
        d.send_catalog(catalog())
        now = int(time.time() * 1000)
        d.send_clicks([cs.click("v", "eve", now - 10_000, "view", "phone-a", "phones")])
        trig = {"id": f"cart_reminder:phone-a:{now}", "intent": "cart_reminder",
                "user_id": "eve", "item_id": "phone-a", "ts": now, "since": now - 10_000}
        for _ in range(2):
            d.produce("triggers", "eve", json.dumps(trig).encode())
        d.flush()
        d.run_until_idle()
        reminders = [c for c in d.copies() if c["intent"] == "cart_reminder"]
        assert len(reminders) == 1
        assert d.user_hash(redis_client, "eve")[b"dup"] == b"1"
        # A message that is no trigger is dead-lettered, like any poison.
        d.produce("triggers", "eve", b"{\"intent\": \"cart_reminder\"}")
        d.flush()
        d.run_until_idle()
        dead = d.read_topic("dlq")
        assert len(dead) == 1
        headers = dict(dead[0].headers())
        assert headers["copystream.error"] == b"malformed"
    finally:
        d.stop_all()


def test_a_price_drop_reaches_the_users_who_looked_at_the_item(env, redis_client):
    d = deployment(env, COPYSTREAM_INTENT_PRICE__DROP_MAX__WATCHERS=2,
                   COPYSTREAM_TRIGGER_SCAN__INTERVAL__MS=200)
    try:
        now = int(time.time() * 1000)
        d.send_catalog(catalog(updated_at=now - 60_000))
        d.send_clicks([
            # Oldest first: with max_watchers = 2, fay drops out of the index.
            cs.click("f", "fay", now - 50_000, "view", "phone-b", "phones", locale="en-US"),
            cs.click("g", "gus", now - 40_000, "view", "phone-b", "phones", locale="en-US"),
            cs.click("h1", "hal", now - 30_000, "add_to_cart", "phone-b", "phones",
                     locale="zh-CN"),
            cs.click("i1", "ivy", now - 20_000, "view", "phone-a", "phones"),  # another item
        ])
        d.run_until_idle()
        # A 2 % cut is below intent.price_drop.min_percent: nobody hears of it.
        d.send_catalog([dict(catalog(updated_at=now - 5000, phone_b_price=3919_000000)[1])])
        d.run_until_idle()
        assert not [c for c in d.copies() if c["intent"] == "price_drop"]
        # 3919 -> 2999: a real drop.
        d.send_catalog([dict(catalog(updated_at=now, phone_b_price=2999_000000)[1])])
        d.run_until_idle(idle_ms=3000)
        drops = [c for c in d.copies() if c["intent"] == "price_drop"]
        assert sorted(c["user_id"] for c in drops) == ["gus", "hal"]
        for c in drops:
            assert [i["item_id"] for i in c["items"]] == ["phone-b"]
            assert c["items"][0]["price_micros"] == 2999_000000
        gus = next(c for c in drops if c["user_id"] == "gus")
        assert "2,999.00 CNY" in gus["text"] and "3,919.00 CNY" in gus["text"]
        hal = next(c for c in drops if c["user_id"] == "hal")
        assert "¥2,999.00" in hal["text"] and "¥3,919.00" in hal["text"]
        # Restarting re-reads the catalog: the drop is not told twice.
        d.run_until_idle()
        assert len([c for c in d.copies() if c["intent"] == "price_drop"]) == 2
    finally:
        d.stop_all()
