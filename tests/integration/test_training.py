"""Training and evaluation against the real broker: a model learned from the
clickstream topic is the model learned from the sequence file that was
imported into it, redeliveries and all; and the service, serving a trained
model, promotes exactly the items `copystream eval` ranks first for the same
history.
"""

import json
import random

import cs

# Small enough to train in seconds, big enough that rankings are not ties.
TRAIN_ARGS = ["--dim", "16", "--heads", "2", "--layers", "1", "--hidden", "32", "--window", "8",
              "--epochs", "4", "--batch", "16", "--negatives", "8", "--threads", "1"]


def write_dataset(tmp_path, users=60, items=40, seed=3):
    """Users who mostly walk the items in steps of 3, so there is something to learn."""
    rng = random.Random(seed)
    lines, attrs = [], {}
    for u in range(users):
        start, n = rng.randrange(items), rng.randrange(5, 13)
        seq = []
        for i in range(n):
            item = (start + 3 * i + (rng.random() < 0.2)) % items
            if item not in seq:
                seq.append(item)
        lines.append(" ".join([f"user{u}"] + [f"item{i}" for i in seq]))
    for i in range(items):
        attrs[f"item{i}"] = [f"brand{i % 5}", f"cat{i % 7}"]
    seq_path, attr_path = tmp_path / "sequences.txt", tmp_path / "attributes.json"
    seq_path.write_text("\n".join(lines) + "\n")
    attr_path.write_text(json.dumps(attrs))
    return seq_path, attr_path


def test_model_from_the_topic_is_the_model_from_the_file(env, tmp_path):
    seq, attrs = write_dataset(tmp_path)
    d = cs.Deployment(env)
    try:
        d.run(["import", "--sequences", str(seq), "--attributes", str(attrs), "--quiet"])
        # A redelivered event (the same record again) must count once.
        first = d.read_topic("clickstream")[0]
        d.produce("clickstream", first.key(), first.value())
        d.flush()
        from_topic, from_file = tmp_path / "topic.model", tmp_path / "file.model"
        d.run(["train", "--topic", d.topics["clickstream"], "--from", "0", "--out",
               str(from_topic)] + TRAIN_ARGS, SOURCE_DATE_EPOCH=1700000000)
        d.run(["train", "--sequences", str(seq), "--attributes", str(attrs), "--out",
               str(from_file)] + TRAIN_ARGS, SOURCE_DATE_EPOCH=1700000000)
        assert from_topic.read_bytes() == from_file.read_bytes()
        # A time range that leaves out every event has nothing to learn from.
        p = d.run(["train", "--topic", d.topics["clickstream"], "--from", "2000-01-01",
                   "--to", "2000-01-02", "--out", str(tmp_path / "none.model")] + TRAIN_ARGS,
                  check=False)
        assert p.returncode == 1 and "no events to learn from" in p.stderr
    finally:
        d.stop_all()


def test_service_promotes_what_eval_ranks_first_for_the_same_history(env, tmp_path):
    seq, attrs = write_dataset(tmp_path, seed=5)
    model = tmp_path / "trained.model"
    d = cs.Deployment(env, COPYSTREAM_MODEL_PATH=model, COPYSTREAM_MODEL_MIN__EVENTS=3,
                      COPYSTREAM_COPY_MIN__INTERVAL__S=0)
    try:
        d.run(["train", "--sequences", str(seq), "--attributes", str(attrs), "--out", str(model)]
              + TRAIN_ARGS)
        d.run(["import", "--sequences", str(seq), "--attributes", str(attrs), "--quiet"])
        d.run_until_idle()
        # eval's test split holds out the last event: give every user one more,
        # so that the history it ranks after is the whole sequence the service saw.
        longer = tmp_path / "longer.txt"
        longer.write_text("".join(line + " item0\n" for line in seq.read_text().splitlines()))
        dump = tmp_path / "topk.txt"
        d.run(["eval", "--model", str(model), "--sequences", str(longer), "--dump-topk",
               str(dump)])
        eval_top = {parts[0]: parts[1:] for parts in
                    (line.split() for line in dump.read_text().splitlines())}
        last = {}
        for c in d.copies():
            if c["user_id"] not in last or c["source_offset"] > last[c["user_id"]]["source_offset"]:
                last[c["user_id"]] = c
        compared = 0
        for user, c in last.items():
            assert c["strategy"] == "transformer", c
            promoted = [i["item_id"] for i in c["items"]]
            assert promoted == eval_top[user][:len(promoted)], (user, promoted, eval_top[user])
            compared += 1
        assert compared == 60
    finally:
        d.stop_all()
