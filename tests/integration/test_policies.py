"""Policies on a real broker and Redis: frequency caps counted per hour and per
day of the user's local time, quiet hours in the user's local time (a delayed
trigger that meets them waits for their end instead of being lost), consent
withdrawn by an unsubscribe, no item promoted twice within the configured
days, and a template field missing with no fallback aborting its copy with
the reason counted -- each suppressed copy counted by reason in /metrics.
"""

import json
import time

import cs

HOUR = 3_600_000
MINUTE = 60_000
JAN15 = 1_705_276_800_000  # 2024-01-15 00:00 UTC: 08:00 in Shanghai, 19:00 the day before in New York

ITEMS = [cs.catalog_item(f"item-{i}", {"en-US": f"Item {i}", "zh-CN": f"商品 {i}"}, "gadgets",
                         [("shiny", {"en-US": "shiny finish", "zh-CN": "亮面"})],
                         price_micros=(10 + i) * 1_000_000)
         for i in range(10)]



def metrics(port):
    """Every series on the service's metrics page: {name with labels: value}."""
    out = {}
    for line in cs.scrape(port)[1].splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def suppressed(page, reason):
    return page.get(f'copystream_copies_suppressed_total{{reason="{reason}"}}', 0)


def run_and_scrape(d, port, until, timeout=90):
    """Starts the service, waits until the metrics satisfy `until`, stops it."""
    p = d.start(COPYSTREAM_HTTP_PORT=port)
    deadline = time.time() + timeout
    page = {}
    try:
        while time.time() < deadline:
            try:
                page = metrics(port)
            except OSError:
                page = {}
            if page and until(page):
                return page
            time.sleep(0.3)
        raise AssertionError(f"metrics never got there: {page}\n{d.log(p)}")
    finally:
        p.terminate()
        assert p.wait(timeout=60) == 0


def views(user, times, locale, prefix):
    return [cs.click(f"{prefix}{i}", user, t, "view", f"item-{i % 10}", "gadgets", locale=locale)
            for i, t in enumerate(times)]


def test_caps_count_per_hour_and_per_day_of_the_users_local_time(env):
    port = cs.free_port()
    d = cs.Deployment(env, COPYSTREAM_COPY_MIN__INTERVAL__S=0, COPYSTREAM_POLICY_MAX__PER__HOUR=2,
                      COPYSTREAM_POLICY_MAX__PER__DAY=3)
    try:
        d.send_catalog(ITEMS)
        # Five views within 40 minutes: two copies, then the hour is full.
        burst = [JAN15 + 2 * HOUR + i * 10 * MINUTE for i in range(5)]
        # Around midnight in Shanghai (15:50 to 16:10 UTC), mid-morning in New
        # York: 4 views, two on each side of Shanghai's midnight.
        midnight = [JAN15 + 15 * HOUR + 50 * MINUTE + i * 7 * MINUTE for i in range(4)]
        d.send_clicks(views("hana", burst, "zh-CN", "b")
                      + views("lin", midnight, "zh-CN", "m")
                      + views("nora", midnight, "en-US", "n"))
        page = run_and_scrape(d, port, lambda p: sum(
            v for k, v in p.items() if k.startswith("copystream_events_consumed_total")) == 13)
        by_user = {}
        for c in d.copies():
            by_user.setdefault(c["user_id"], []).append(c["source_event_id"])
        assert sorted(by_user["hana"]) == ["b0", "b1"]
        # Lin's views fall on two local days (cap 3 a day, 2 an hour): all four go out --
        # 23:50 and 23:57 on one day, 00:04 and 00:11 on the next.
        assert sorted(by_user["lin"]) == ["m0", "m1", "m2", "m3"]
        # Nora's are 10:50 to 11:11 in New York: one day, so the fourth is one too many.
        assert sorted(by_user["nora"]) == ["n0", "n1", "n2"]
        assert suppressed(page, "cap_hour") == 3
        assert suppressed(page, "cap_day") == 1
    finally:
        d.stop_all()


def test_quiet_hours_hold_copy_in_the_users_night_and_put_triggers_back(env, redis_client):
    port = cs.free_port()
    d = cs.Deployment(env, COPYSTREAM_COPY_MIN__INTERVAL__S=0,
                      COPYSTREAM_POLICY_QUIET__HOURS="22:00-08:00")
    try:
        d.send_catalog(ITEMS)
        # The next 23:30 in Shanghai (10:30 or 11:30 in New York): the trigger put
        # back until 08:00 there is then not due while the test looks at it.
        shanghai = int(time.time()) + 8 * 3600
        local = shanghai // 86400 * 86400 + 23 * 3600 + 1800
        if local <= shanghai:
            local += 86400
        at = (local - 8 * 3600) * 1000
        d.send_clicks(views("mei", [at], "zh-CN", "q") + views("sam", [at], "en-US", "q"))
        page = run_and_scrape(d, port, lambda p: suppressed(p, "quiet_hours") == 1 and
                              p.get('copystream_copies_by_intent_total{intent="recommendation"}'))
        assert [c["user_id"] for c in d.copies()] == ["sam"]
        # A cart reminder that comes due at that moment for mei (whose locale the
        # service now knows): put back until 08:00 in Shanghai.
        trig = {"id": f"cart_reminder:item-3:{at}", "intent": "cart_reminder", "user_id": "mei",
                "item_id": "item-3", "ts": at, "since": at - HOUR}
        d.produce("triggers", "mei", json.dumps(trig).encode())
        d.flush()
        run_and_scrape(d, port, lambda p: p.get("copystream_triggers_deferred_total") == 1)
        assert [c["user_id"] for c in d.copies()] == ["sam"]
        due = d.due_entries(redis_client)
        assert due == [({"intent": "cart_reminder", "item_id": "item-3", "user_id": "mei",
                         "since": at - HOUR}, at + 8 * HOUR + 30 * MINUTE)]
    finally:
        d.stop_all()


def test_an_unsubscribe_withdraws_consent(env):
    port = cs.free_port()
    d = cs.Deployment(env, COPYSTREAM_COPY_MIN__INTERVAL__S=0)
    try:
        d.send_catalog(ITEMS)
        d.send_clicks(views("ola", [JAN15], "en-US", "a"))
        d.run_until_idle()
        (first,) = d.copies()
        rx = {"reaction_id": "u1", "copy_id": first["copy_id"], "user_id": "ola",
              "type": "UNSUBSCRIBE", "item_id": None, "value": None, "timestamp": JAN15 + 1000}
        d.produce("reactions", "ola", cs.frame(4, d.reaction_schema, rx))
        d.flush()
        d.run_until_idle()
        d.send_clicks(views("ola", [JAN15 + HOUR, JAN15 + 2 * HOUR], "en-US", "b"))
        page = run_and_scrape(d, port, lambda p: suppressed(p, "no_consent") == 2)
        assert len(d.copies()) == 1
        assert page.get('copystream_copies_by_intent_total{intent="recommendation"}', 0) == 0
    finally:
        d.stop_all()


def test_an_item_is_not_promoted_twice_within_the_days(env):
    port = cs.free_port()
    d = cs.Deployment(env, COPYSTREAM_COPY_MIN__INTERVAL__S=0, COPYSTREAM_POLICY_NO__REPEAT__DAYS=2,
                      COPYSTREAM_COPY_ITEMS=3)
    try:
        d.send_catalog(ITEMS)
        times = [JAN15 + i * HOUR for i in range(3)] + [JAN15 + 50 * HOUR]
        d.send_clicks([cs.click(f"r{i}", "pia", t, "view", "item-0", "gadgets", locale="en-US")
                       for i, t in enumerate(times)])
        d.run_until_idle()
        copies = sorted(d.copies(), key=lambda c: c["source_offset"])
        promoted = [[i["item_id"] for i in c["items"]] for c in copies]
        assert len(promoted) == 4
        # The first three copies share no item: 9 candidates, 3 per copy.
        seen = [x for p in promoted[:3] for x in p]
        assert len(seen) == 9 and len(set(seen)) == 9
        # Two days later they are free again.
        assert set(promoted[3]) <= set(promoted[0]), promoted
        # A reminder about an item promoted an hour ago is a repeat.
        trig = {"id": f"cart_reminder:{promoted[3][0]}:{times[3] + HOUR}",
                "intent": "cart_reminder", "user_id": "pia", "item_id": promoted[3][0],
                "ts": times[3] + HOUR, "since": times[3]}
        d.produce("triggers", "pia", json.dumps(trig).encode())
        d.flush()
        run_and_scrape(d, port, lambda p: suppressed(p, "repeat") == 1)
        assert len(d.copies()) == 4
    finally:
        d.stop_all()


def test_a_missing_field_without_fallback_aborts_the_copy_with_its_reason(env, tmp_path):
    templates = tmp_path / "templates.conf"
    templates.write_text(
        "[recommendation.zh-CN.a]\ntext = 看看{item.title|这款}，售价{item.price}\n"
        "[recommendation.en-US.a]\ntext = See {item.title|this} at {item.price}\n")
    port = cs.free_port()
    d = cs.Deployment(env, COPYSTREAM_COPY_MIN__INTERVAL__S=0, COPYSTREAM_COPY_TEMPLATES=templates,
                      COPYSTREAM_COPY_ITEMS=1,
                      **{f"COPYSTREAM_INTENT_{k}_ENABLED": "false"
                         for k in ("CART__REMINDER", "CROSS__SELL", "RE__ENGAGEMENT", "PRICE__DROP")})
    try:
        unpriced = cs.catalog_item("bare", {"en-US": "Bare Item", "zh-CN": "无价商品"}, "misc",
                                   [("plain", {"en-US": "plain", "zh-CN": "朴素"})])
        priced = cs.catalog_item("tagged", {"en-US": "Tagged Item", "zh-CN": "有价商品"}, "misc2",
                                 [("plain", {"en-US": "plain", "zh-CN": "朴素"})],
                                 price_micros=5_000_000)
        d.send_catalog([unpriced, priced])
        # qin likes only the unpriced item's category; rui only the priced one's.
        d.send_clicks([cs.click("x1", "qin", JAN15, "view", "tagged", "misc", locale="en-US"),
                       cs.click("y1", "rui", JAN15, "view", "bare", "misc2", locale="en-US")])
        p = d.start(COPYSTREAM_HTTP_PORT=port)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if suppressed(metrics(port), "missing_field") == 1 and d.copies():
                    break
            except OSError:
                pass
            time.sleep(0.3)
        p.terminate()
        assert p.wait(timeout=60) == 0
        (copy,) = d.copies()
        assert copy["user_id"] == "rui" and copy["text"] == "See Tagged Item at 5.00 CNY"
        log = d.log(p)
        assert "no recommendation copy for event x1 of user qin: {item.price} has nothing to " \
               "show and no fallback" in log, log
    finally:
        d.stop_all()
