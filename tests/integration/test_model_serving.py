"""The learned strategy in the service: the model chooses for users with enough
history and stamps its version on their copies, the affinity strategy keeps
the others, exclusions hold, a catalog item the model never saw can be
promoted through its attributes, and a new model file is picked up without a
restart.
"""

import json
import os
import signal
import subprocess
import time

import cs

T0 = 1_700_000_000_000

HD = ("hd_screen", {"zh-CN": "高清屏幕", "en-US": "high-definition screen"})
CPU = ("fast_cpu", {"zh-CN": "高性能处理器", "en-US": "high-performance processor"})
BATTERY = ("long_battery", {"zh-CN": "长续航", "en-US": "long battery life"})

# The model knows a..d; phone-new joins the catalog after training.
KNOWN = {
    "phone-a": [HD, CPU], "phone-b": [HD, BATTERY], "phone-c": [BATTERY],
    "phone-d": [HD, CPU],
}


def catalog(available=("phone-a", "phone-b", "phone-c", "phone-d", "phone-new")):
    items = [cs.catalog_item(i, {"en-US": i.upper()}, "phones", attrs, price_micros=1_000_000,
                             available=i in available)
             for i, attrs in KNOWN.items()]
    items.append(cs.catalog_item("phone-new", {"en-US": "PHONE-NEW"}, "phones", [HD, BATTERY],
                                 price_micros=1_000_000, available="phone-new" in available))
    return items


def make_model(env, path, seed):
    spec = path.with_suffix(".json")
    spec.write_text(json.dumps({i: [a for a, _ in attrs] for i, attrs in KNOWN.items()}))
    subprocess.run([str(env["bin"].parent / "tools" / "mkmodel"), str(path), "--items", str(spec),
                    "--seed", str(seed), "--dim", "8", "--layers", "1", "--heads", "2",
                    "--window", "8"], check=True)


def model_deployment(env, model, **extra):
    return cs.Deployment(env, COPYSTREAM_MODEL_PATH=model, COPYSTREAM_MODEL_MIN__EVENTS=3,
                         COPYSTREAM_COPY_MIN__INTERVAL__S=0, **extra)


def test_model_chooses_for_users_with_history_and_stamps_its_version(env, tmp_path):
    model = tmp_path / "model.bin"
    make_model(env, model, seed=11)
    d = model_deployment(env, model)
    try:
        d.send_catalog(catalog())
        views = ["phone-a", "phone-b", "phone-c", "phone-a", "phone-b"]
        d.send_clicks([cs.click(f"e{i}", "gina", T0 + i * 1000, "view", item, "phones")
                       for i, item in enumerate(views)])
        d.run_until_idle()
        copies = sorted(d.copies(), key=lambda c: c["source_offset"])
        assert [c["source_event_id"] for c in copies] == ["e0", "e1", "e2", "e3", "e4"]
        # Fewer than 3 events of history: the affinity strategy, no model version.
        assert [c["strategy"] for c in copies] == ["affinity"] * 2 + ["transformer"] * 3
        assert [c["model_version"] for c in copies[:2]] == [None, None]
        versions = {c["model_version"] for c in copies[2:]}
        assert len(versions) == 1 and None not in versions
        for c, item in zip(copies, views):
            promoted = [i["item_id"] for i in c["items"]]
            assert item not in promoted          # never the item being looked at
            assert len(promoted) == len(set(promoted)) == 3
            scores = [i["score"] for i in c["items"]]
            assert scores == sorted(scores, reverse=True)
    finally:
        d.stop_all()


def test_only_an_item_the_model_never_saw_is_left_to_promote(env, tmp_path):
    model = tmp_path / "model.bin"
    make_model(env, model, seed=12)
    d = model_deployment(env, model)
    try:
        # phone-d is out of stock, a..c will be bought: the model must promote
        # phone-new, which it can score only through its attributes.
        d.send_catalog(catalog(available=("phone-a", "phone-b", "phone-c", "phone-new")))
        events = [cs.click(f"p{i}", "hugo", T0 + i * 1000, "purchase", item, "phones")
                  for i, item in enumerate(["phone-a", "phone-b", "phone-c"])]
        events.append(cs.click("v", "hugo", T0 + 9000, "view", "phone-b", "phones"))
        d.send_clicks(events)
        d.run_until_idle()
        last = max(d.copies(), key=lambda c: c["source_offset"])
        assert last["source_event_id"] == "v" and last["strategy"] == "transformer"
        assert [i["item_id"] for i in last["items"]] == ["phone-new"]
        # Its reasons are its attributes the user likes, as with any pick.
        assert {r["attribute_id"] for r in last["reasons"]} <= {"hd_screen", "long_battery"}
    finally:
        d.stop_all()


def test_a_new_model_file_is_used_without_a_restart(env, tmp_path):
    model = tmp_path / "model.bin"
    make_model(env, model, seed=21)
    d = model_deployment(env, model, COPYSTREAM_MODEL_RELOAD__CHECK__S=0)
    try:
        d.send_catalog(catalog())
        d.send_clicks([cs.click(f"a{i}", "ida", T0 + i * 1000, "view", "phone-a", "phones")
                       for i in range(4)])
        p = d.start()
        deadline = time.time() + 60
        while len(d.read_topic("copy")) < 4:
            assert time.time() < deadline and p.poll() is None, d.log(p)
            time.sleep(0.2)
        first = {c["model_version"] for c in d.copies() if c["strategy"] == "transformer"}
        # A broken file is refused and the current model stays.
        model.write_bytes(b"not a model at all")
        p.send_signal(signal.SIGHUP)
        time.sleep(1)
        make_model(env, model, seed=22)  # written aside and renamed over the path
        p.send_signal(signal.SIGHUP)
        time.sleep(1)
        d.send_clicks([cs.click(f"b{i}", "ida", T0 + 10_000 + i * 1000, "view", "phone-c",
                                "phones") for i in range(2)])
        while len(d.read_topic("copy")) < 6:
            assert time.time() < deadline and p.poll() is None, d.log(p)
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
        log = d.log(p)
        assert "not reloaded" in log and "not a copystream model" in log
        later = {c["model_version"] for c in d.copies()
                 if c["source_event_id"].startswith("b")}
        assert len(first) == 1 and len(later) == 1 and later != first
    finally:
        d.stop_all()
