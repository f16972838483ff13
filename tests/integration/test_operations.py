"""What operators and data people touch: /metrics and /healthz while the service
runs, a graceful stop on SIGTERM, and `copystream import` of a dataset in the
common sequence format.
"""

import json
import signal
import time

import pytest

import cs

T0 = 1_700_000_000_000







@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_metrics_count_what_happened_and_sigterm_stops_cleanly(env, guarantee):
    port = cs.free_port()
    d = cs.Deployment(env, COPYSTREAM_HTTP_PORT=port, COPYSTREAM_COPY_MIN__INTERVAL__S=0,
                      COPYSTREAM_PROCESSING_GUARANTEE=guarantee)
    try:
        d.send_catalog([cs.catalog_item("i1", {"en-US": "One"}, "c", [("a", {"en-US": "nice"})]),
                        cs.catalog_item("i2", {"en-US": "Two"}, "c", [("a", {"en-US": "nice"})])])
        events = [cs.click(f"e{i}", f"u{i % 7}", T0 + i * 1000, ["view", "click"][i % 2],
                           "i1", "c") for i in range(40)]
        d.send_clicks(events)
        d.produce("clickstream", "u1", b"not avro")
        d.flush()
        p = d.start()
        deadline = time.time() + 60
        page = ""
        while time.time() < deadline:
            try:
                status, page = cs.scrape(port)
            except OSError:
                time.sleep(0.2)
                continue
            if cs.metric(page, 'copystream_events_consumed_total{type="click"}') == 20 and \
                    'copystream_consumer_lag{' in page:
                break
            time.sleep(0.2)
        assert cs.metric(page, 'copystream_events_consumed_total{type="view"}') == 20
        assert cs.metric(page, 'copystream_events_consumed_total{type="click"}') == 20
        assert cs.metric(page, 'copystream_dead_lettered_total{reason="bad-framing"}') == 1
        copies = len(d.read_topic("copy"))
        assert copies == 40  # every event triggers: i2 is always there to promote
        assert cs.metric(page, 'copystream_copies_produced_total{locale="en-US",'
                            'strategy="affinity"}') == copies
        assert cs.metric(page, "copystream_processing_seconds_count") == 41
        lags = [float(line.split()[-1]) for line in page.splitlines()
                if line.startswith("copystream_consumer_lag{")]
        assert lags and max(lags) == 0
        status, body = cs.scrape(port, "/healthz")
        assert status == 200 and body.startswith("ok")
        committed = cs.metric(page, 'copystream_kafka_transactions_total{result="committed"}')
        if guarantee == "exactly_once":
            assert committed >= 1
            assert cs.metric(page, 'copystream_kafka_transactions_total{result="aborted"}') == 0
        else:
            assert committed == 0

        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
        log = d.log(p)
        assert "stopped cleanly" in log
    finally:
        d.stop_all()


def test_import_publishes_sequences_and_catalog(env, redis_client, tmp_path):
    seqs = tmp_path / "sequences.txt"
    seqs.write_text("1 10 11 12\n2 11 13\n")
    attrs = tmp_path / "item2attributes.json"
    attrs.write_text(json.dumps({"10": [1, 2], "11": [2], "12": [], "13": [3]}))
    d = cs.Deployment(env)
    try:
        d.run(["import", "--sequences", str(seqs), "--attributes", str(attrs),
               "--start-ms", str(T0), "--spacing-s", "60", "--quiet"])
        events = [cs.unframe(d.click_schema, m.value())[1] for m in d.read_topic("clickstream")]
        events.sort(key=lambda e: e["event_id"])
        assert [(e["event_id"], e["user_id"], e["item_id"], e["type"], e["timestamp"])
                for e in events] == [
            ("1:0", "1", "10", "PURCHASE", T0),
            ("1:1", "1", "11", "PURCHASE", T0 + 60_000),
            ("1:2", "1", "12", "PURCHASE", T0 + 120_000),
            ("2:0", "2", "11", "PURCHASE", T0),
            ("2:1", "2", "13", "PURCHASE", T0 + 60_000),
        ]
        items = {cs.unframe(d.catalog_schema, m.value())[1]["item_id"]:
                 cs.unframe(d.catalog_schema, m.value())[1] for m in d.read_topic("catalog")}
        assert sorted(items) == ["10", "11", "12", "13"]
        assert [a["id"] for a in items["10"]["attributes"]] == ["a1", "a2"]
        d.run_until_idle()
        assert d.user_hash(redis_client, "1")[b"n.purchase"] == b"3"
        _, attr = cs.decode_affinities(d.user_hash(redis_client, "2")[b"attr"])
        assert set(attr) == {cs.h64("a2"), cs.h64("a3")}
        # Importing the same file again publishes the same event ids, which the
        # service recognises as upstream duplicates.
        d.run(["import", "--sequences", str(seqs), "--start-ms", str(T0), "--spacing-s", "60",
               "--quiet"])
        d.run_until_idle()
        user1 = d.user_hash(redis_client, "1")
        assert user1[b"n.purchase"] == b"3" and user1[b"dup"] == b"3"
    finally:
        d.stop_all()
