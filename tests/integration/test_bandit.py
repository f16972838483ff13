"""The reaction loop on a real broker and Redis: simulated users who click one
variant far more than the other make a running service shift its copy there;
reactions are attributed to their copy, late and unknown ones only counted;
redelivered and repeated reactions count once in the shared statistics; the
holdout gets no copy and `copystream report` shows the lift over it;
dismissed items are not promoted again and an unsubscribe stops copy.
"""

import json
import random
import time

import cs

T0 = 1_700_000_000_000
HOUR = 3_600_000

CATALOG = [cs.catalog_item(f"item-{i}", {"en-US": f"Item {i}", "zh-CN": f"商品 {i}"}, "gadgets",
                           [("shiny", {"en-US": "shiny finish", "zh-CN": "亮面"})],
                           price_micros=(10 + i) * 1_000_000)
           for i in range(8)]





def stats(d, redis_client):
    return d.bandit_stats(redis_client)


def reaction(rid, copy, rtype, ts, user=None, item=None):
    return {"reaction_id": rid, "copy_id": copy["copy_id"] if copy else None,
            "user_id": user or copy["user_id"], "type": rtype, "item_id": item,
            "value": None, "timestamp": ts}


def send_reactions(d, reactions):
    for r in reactions:
        d.produce("reactions", r["user_id"], cs.frame(4, d.reaction_schema, r))
    d.flush()


def views(users, ts, prefix):
    return [cs.click(f"{prefix}-{u}", u, ts, "view", "item-0", "gadgets", locale="en-US")
            for u in users]


def test_users_who_prefer_a_variant_shift_traffic_to_it(env, redis_client):
    port = cs.free_port()
    d = cs.Deployment(env, COPYSTREAM_BANDIT_REFRESH__S=1, COPYSTREAM_HTTP_PORT=port)
    try:
        d.send_catalog(CATALOG)
        users = [f"u{i:03d}" for i in range(240)]
        p = d.start()
        d.send_clicks(views(users, T0, "r1"))
        first = cs.wait_for("the first round's copies",
                            lambda: (c := d.copies()) and len(c) == len(users) and c)
        share_b_before = sum(c["variant_id"] == "b" for c in first) / len(first)

        # Users see every copy, and click variant b ten times as often as a.
        rnd = random.Random(5)
        rate = {"a": 0.05, "b": 0.5}
        rx, clicked = [], {"a": set(), "b": set()}
        for c in first:
            rx.append(reaction(f"i-{c['copy_id']}", c, "IMPRESSION", T0 + 1000))
            if rnd.random() < rate[c["variant_id"]]:
                clicked[c["variant_id"]].add(c["copy_id"])
                rx.append(reaction(f"c-{c['copy_id']}", c, "CLICK", T0 + 2000))
                # An upstream retry and a second click on the same copy: one click.
                rx.append(reaction(f"c-{c['copy_id']}", c, "CLICK", T0 + 2000))
                rx.append(reaction(f"c2-{c['copy_id']}", c, "CLICK", T0 + 3000))
        late = reaction("late", first[0], "CLICK", T0 + 86_400_000 + 5000)
        unknown = dict(reaction("unknown", first[1], "CLICK", T0 + 5000),
                       copy_id=f"{d.topics['clickstream']}:0:999999")
        send_reactions(d, rx + [late, unknown])

        sent = {v: sum(c["variant_id"] == v for c in first) for v in "ab"}
        want = {f"new.en-US.{v}.{k}": n for v in "ab" for k, n in
                (("sent", sent[v]), ("imp", sent[v]), ("click", len(clicked[v]))) if n}
        cs.wait_for("the reactions in the statistics", lambda: stats(d, redis_client) == want)
        # The late and the unknown reaction may sit in a partition processed after the rest.
        cs.wait_for("the late and the unknown reaction counted", lambda: (
            cs.metric(cs.scrape(port)[1], 'copystream_reactions_attributed_total{result="late"}') == 1 and
            cs.metric(cs.scrape(port)[1], 'copystream_reactions_attributed_total{result="unknown"}') == 1))
        assert cs.metric(cs.scrape(port)[1], 'copystream_reactions_attributed_total{result="attributed"}') == \
            len(rx) - sum(len(s) for s in clicked.values())  # the retries are duplicates

        # The same users come back after the service refreshed its snapshot.
        time.sleep(1.5)
        d.send_clicks(views(users, T0 + HOUR, "r2"))
        second = cs.wait_for("the second round's copies",
                             lambda: (c := d.copies()) and len(c) == 2 * len(users) and c)
        second = [c for c in second if c["source_event_id"].startswith("r2-")]
        share_b_after = sum(c["variant_id"] == "b" for c in second) / len(second)
        assert 0.3 < share_b_before < 0.7, share_b_before
        assert share_b_after > 0.9, (share_b_before, share_b_after)
        p.terminate()
        assert p.wait(timeout=60) == 0
    finally:
        d.stop_all()


def test_redelivered_reactions_and_copies_count_once(env, redis_client):
    d = cs.Deployment(env)
    try:
        d.send_catalog(CATALOG)
        users = [f"v{i:02d}" for i in range(30)]
        d.send_clicks(views(users, T0, "e"))
        d.run_until_idle()
        copies = d.copies()
        assert len(copies) == len(users)
        send_reactions(d, [reaction(f"k-{c['copy_id']}", c, "CLICK", T0 + 1000) for c in copies]
                       + [reaction(f"v-{c['copy_id']}", None, "CONVERT", T0 + 9000,
                                   user=c["user_id"]) for c in copies[:10]])
        d.run_until_idle()
        before = stats(d, redis_client)
        assert sum(v for k, v in before.items() if k.endswith(".sent")) == len(users)
        assert sum(v for k, v in before.items() if k.endswith(".click")) == len(users)
        assert sum(v for k, v in before.items() if k.endswith(".imp")) == len(users)
        assert sum(v for k, v in before.items() if k.endswith(".conv")) == 10
        # Another consumer group reads both topics again from the start, as a
        # replay after lost offsets would: every input is redelivered.
        d.run_until_idle(COPYSTREAM_KAFKA_GROUP_ID=d.group + "-replay")
        assert stats(d, redis_client) == before
        assert len(d.copies()) == len(users)  # committed copies are not republished
    finally:
        d.stop_all()


def test_holdout_gets_no_copy_and_report_shows_the_lift(env, redis_client):
    d = cs.Deployment(env, COPYSTREAM_HOLDOUT_PERCENT=50)
    try:
        d.send_catalog(CATALOG)
        users = [f"h{i:03d}" for i in range(200)]
        d.send_clicks(views(users, T0, "e"))
        d.run_until_idle()
        copies = d.copies()
        treated = {c["user_id"] for c in copies}
        holdout = set(users) - treated
        assert 60 < len(holdout) < 140, len(holdout)
        s = stats(d, redis_client)
        assert s["new.en-US.@holdout.sent"] == len(holdout)
        assert sum(v for k, v in s.items() if k.endswith(".sent")) == len(users)
        # Conversions name no copy: treated users convert at 40 %, the holdout at 10 %.
        rnd = random.Random(9)
        rx = [reaction(f"cv-{u}", None, "CONVERT", T0 + HOUR, user=u)
              for u in users if rnd.random() < (0.4 if u in treated else 0.1)]
        send_reactions(d, rx)
        d.run_until_idle()
        s = stats(d, redis_client)
        conv_h = sum(1 for r in rx if r["user_id"] in holdout)
        assert s.get("new.en-US.@holdout.conv", 0) == conv_h
        assert sum(v for k, v in s.items() if k.endswith(".conv")) == len(rx)

        rows = json.loads(d.run(["report", "--json"]).stdout)
        by_variant = {r["variant"]: r for r in rows}
        assert set(by_variant) == {"a", "b", "holdout"}
        assert by_variant["holdout"]["sent"] == len(holdout)
        assert by_variant["holdout"]["conversions"] == conv_h
        for v in "ab":
            r = by_variant[v]
            assert r["conversion_rate"] == r["conversions"] / r["sent"]
            assert r["conversion_rate_low"] < r["conversion_rate"] < r["conversion_rate_high"]
            assert r["lift"] > 0.5 and r["lift_low"] < r["lift"] < r["lift_high"]
            assert r["ctr"] is None  # no impressions were reported
        table = d.run(["report", "--by", "locale,segment"]).stdout
        assert "(holdout)" in table and "lift vs holdout" in table and "en-US" in table
    finally:
        d.stop_all()


def test_dismissed_item_is_not_promoted_and_unsubscribe_stops_copy(env, redis_client):
    d = cs.Deployment(env, COPYSTREAM_COPY_MIN__INTERVAL__S=0)
    try:
        d.send_catalog(CATALOG)
        d.send_clicks([cs.click("d1", "dana", T0, "view", "item-7", "gadgets", locale="en-US"),
                       cs.click("o1", "omar", T0, "view", "item-7", "gadgets", locale="en-US")])
        d.run_until_idle()
        first = {c["user_id"]: c for c in d.copies()}
        top = first["dana"]["items"][0]["item_id"]
        # Dana dismisses the copy (no item named: its first item is hidden);
        # Omar unsubscribes.
        send_reactions(d, [reaction("x1", first["dana"], "DISMISS", T0 + 1000),
                           reaction("x2", None, "UNSUBSCRIBE", T0 + 1000, user="omar")])
        d.run_until_idle()
        d.send_clicks([cs.click("d2", "dana", T0 + 2000, "view", "item-7", "gadgets"),
                       cs.click("o2", "omar", T0 + 2000, "view", "item-7", "gadgets")])
        d.run_until_idle()
        later = [c for c in d.copies() if c["source_event_id"] in ("d2", "o2")]
        assert [c["user_id"] for c in later] == ["dana"]
        assert top not in [i["item_id"] for i in later[0]["items"]]
        assert d.user_hash(redis_client, "omar")[b"ns"] == str(T0 + 1000).encode()
        s = stats(d, redis_client)
        assert sum(v for k, v in s.items() if k.endswith(".dismiss")) == 1
    finally:
        d.stop_all()
