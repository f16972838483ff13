"""Tools the integration tests share: an isolated copystream deployment per test
(its own topics, consumer group and Redis key prefix on the shared broker and
Redis), Avro messages written and read with fastavro -- an implementation
independent of the Avro C code under test -- and a decoder for the user-state
blobs that follows docs/ARCHITECTURE.md rather than the C code.
"""

import io
import json
import os
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import fastavro
import xxhash
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"

EVENT_TYPES = ["view", "click", "add_to_cart", "purchase", "search", "favorite"]


def _plain(schema):
    """The schema without logical types: timestamps stay epoch-ms integers, as
    the C side sees them, instead of becoming datetimes."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


def load_schema(name):
    """Parses schemas/<name>.avsc (or any .avsc path) with fastavro."""
    path = Path(name)
    if not path.suffix:
        path = SCHEMAS / f"{name}.avsc"
    return fastavro.parse_schema(_plain(json.loads(path.read_text())))


def frame(schema_id, schema, record):
    """Confluent wire framing: magic 0, 4-byte big-endian schema id, Avro binary."""
    out = io.BytesIO()
    out.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def unframe(schema, data):
    assert data[0] == 0, "magic byte"
    schema_id = struct.unpack(">I", data[1:5])[0]
    return schema_id, fastavro.schemaless_reader(io.BytesIO(data[5:]), schema)


def wait_for(what, predicate, timeout=90, every=0.3):
    """Polls predicate() every `every` seconds until it returns something true, and returns
    that; fails the test naming `what` after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def h64(s):
    """util_hash(): XXH3-64 of the UTF-8 id."""
    return xxhash.xxh3_64_intdigest(s.encode())


def click(event_id, user, ts_ms, etype, item=None, category=None, locale=None, **extra):
    rec = {
        "event_id": event_id, "user_id": user, "timestamp": ts_ms, "type": etype.upper(),
        "item_id": item, "category": category, "price_micros": None, "currency": None,
        "query": None, "session_id": None, "locale": locale,
    }
    rec.update(extra)
    return rec


def catalog_item(item_id, titles, category, attrs, price_micros=None, available=True,
                 brand=None):
    """attrs: list of (id, {locale: phrase})."""
    return {
        "item_id": item_id, "titles": titles, "category": category, "brand": brand,
        "price_micros": price_micros, "currency": "CNY" if price_micros else None,
        "attributes": [{"id": a, "phrases": p} for a, p in attrs],
        "available": available, "updated_at": 1700000000000,
    }


class Deployment:
    """One isolated copystream: topics, group and key prefix unique to a test."""

    def __init__(self, env, partitions=3, **config):
        self.env = env
        tag = uuid.uuid4().hex[:10]
        self.tag = tag
        self.topics = {k: f"{k}-{tag}" for k in ("clickstream", "catalog", "reactions", "copy",
                                                  "dlq", "triggers", "control")}
        self.group = f"g-{tag}"
        self.prefix = f"t{tag}"
        self.vars = {
            "COPYSTREAM_KAFKA_BOOTSTRAP_SERVERS": env["bootstrap"],
            "COPYSTREAM_KAFKA_GROUP_ID": self.group,
            "COPYSTREAM_REDIS_HOST": env["redis_host"],
            "COPYSTREAM_REDIS_PORT": str(env["redis_port"]),
            "COPYSTREAM_REDIS_KEY__PREFIX": self.prefix,
            "COPYSTREAM_TOPIC_CLICKSTREAM": self.topics["clickstream"],
            "COPYSTREAM_TOPIC_CATALOG": self.topics["catalog"],
            "COPYSTREAM_TOPIC_REACTIONS": self.topics["reactions"],
            "COPYSTREAM_TOPIC_COPY": self.topics["copy"],
            "COPYSTREAM_TOPIC_DEAD__LETTER": self.topics["dlq"],
            "COPYSTREAM_TOPIC_TRIGGERS": self.topics["triggers"],
            "COPYSTREAM_TOPIC_CONTROL": self.topics["control"],
            # Every event with a category is a recommendation candidate, as
            # before intents had rules: the tests that are not about the
            # streak rule stay simple. test_intents.py sets its own.
            "COPYSTREAM_INTENT_RECOMMENDATION_STREAK": "1",
            # No caps and repeats allowed, likewise; test_policies.py sets them.
            "COPYSTREAM_POLICY_MAX__PER__HOUR": "0",
            "COPYSTREAM_POLICY_MAX__PER__DAY": "0",
            "COPYSTREAM_POLICY_NO__REPEAT__DAYS": "0",
            "COPYSTREAM_TOPIC_PARTITIONS": str(partitions),
            "COPYSTREAM_HTTP_PORT": "0",
            "COPYSTREAM_SCHEMA_DIR": str(SCHEMAS),
            "COPYSTREAM_COPY_TEMPLATES": str(ROOT / "config" / "templates.conf"),
            "COPYSTREAM_BATCH_MAX__WAIT__MS": "20",
        }
        for key, value in config.items():
            self.vars[key] = str(value)
        self.procs = []
        self.run(["topics"])
        self.click_schema = load_schema("ClickEvent")
        self.copy_schema = load_schema("PersonalizedCopy")
        self.catalog_schema = load_schema("CatalogItem")
        self.reaction_schema = load_schema("Reaction")
        self._producer = None

    # -- the binary ---------------------------------------------------------------

    def process_env(self, **override):
        env = {k: v for k, v in os.environ.items() if not k.startswith("COPYSTREAM_")}
        env.update(self.vars)
        env.update({k: str(v) for k, v in override.items()})
        return env

    def run(self, args, check=True, timeout=120, **override):
        """Runs `copystream ARGS` to completion in the project root."""
        p = subprocess.run([str(self.env["bin"])] + list(args), cwd=self.env["root"],
                           env=self.process_env(**override), capture_output=True, text=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"copystream {' '.join(args)} exited {p.returncode}:\n"
                                 f"{p.stderr[-4000:]}")
        return p

    def start(self, *args, **override):
        """Starts the service in the background; returns the Popen."""
        log = open(self.env["services_dir"] / f"copystream-{self.tag}-{len(self.procs)}.log", "w")
        p = subprocess.Popen([str(self.env["bin"]), "run"] + list(args), cwd=self.env["root"],
                             env=self.process_env(**override), stdout=log,
                             stderr=subprocess.STDOUT)
        p.log_path = log.name
        self.procs.append(p)
        return p

    def run_until_idle(self, idle_ms=1500, timeout=180, **override):
        p = self.start("--exit-when-idle", str(idle_ms), **override)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            raise AssertionError("service did not become idle:\n" + self.log(p))
        assert rc == 0, f"service exited {rc}:\n" + self.log(p)
        return p

    @staticmethod
    def log(p):
        return Path(p.log_path).read_text()[-6000:]

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()

    # -- Kafka ----------------------------------------------------------------------

    @property
    def producer(self):
        if self._producer is None:
            self._producer = Producer({"bootstrap.servers": self.env["bootstrap"],
                                       "enable.idempotence": True, "linger.ms": 5})
        return self._producer

    def produce(self, topic_key, key, value, headers=None, timestamp=None):
        """timestamp: the message's CreateTime in Unix ms (default: now), which Kafka's time
        index -- and so replay's --from and --to -- goes by."""
        extra = {} if timestamp is None else {"timestamp": timestamp}
        self.producer.produce(self.topics[topic_key], key=key, value=value, headers=headers,
                              **extra)

    def flush(self):
        assert self.producer.flush(30) == 0, "messages left undelivered"

    def send_clicks(self, events, schema_id=1, schema=None, timestamps=None):
        for i, e in enumerate(events):
            self.produce("clickstream", e["user_id"], frame(schema_id, schema or self.click_schema, e),
                         timestamp=timestamps[i] if timestamps else None)
        self.flush()

    def send_catalog(self, items):
        for it in items:
            self.produce("catalog", it["item_id"], frame(2, self.catalog_schema, it))
        self.flush()

    def read_topic(self, topic_key, timeout=60):
        """Every message of a topic, from the beginning to the end."""
        topic = self.topics.get(topic_key, topic_key)
        c = Consumer({"bootstrap.servers": self.env["bootstrap"], "group.id": f"r-{uuid.uuid4()}",
                      "enable.auto.commit": False, "enable.partition.eof": True,
                      "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
        try:
            md = c.list_topics(topic, timeout=10)
            parts = list(md.topics[topic].partitions)
            c.assign([TopicPartition(topic, p, 0) for p in parts])
            eof, out = set(), []
            deadline = time.time() + timeout
            while len(eof) < len(parts):
                assert time.time() < deadline, f"did not reach the end of {topic}"
                m = c.poll(0.5)
                if m is None:
                    continue
                if m.error():
                    if m.error().code() == -191:  # _PARTITION_EOF
                        eof.add(m.partition())
                        continue
                    raise AssertionError(str(m.error()))
                out.append(m)
            return out
        finally:
            c.close()

    def copies(self, topic_key="copy"):
        return [unframe(self.copy_schema, m.value())[1] for m in self.read_topic(topic_key)]

    def create_topic(self, name, partitions=3):
        admin = AdminClient({"bootstrap.servers": self.env["bootstrap"]})
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)

    def committed(self, group, topic_keys=("clickstream", "reactions")):
        """The offsets group has committed on the input topics: {(topic, partition): offset},
        negative where it has none. Read with a consumer that never subscribes, so the group
        is only looked at."""
        c = Consumer({"bootstrap.servers": self.env["bootstrap"], "group.id": group,
                      "enable.auto.commit": False})
        try:
            tps = []
            for key in topic_keys:
                topic = self.topics[key]
                parts = c.list_topics(topic, timeout=10).topics[topic].partitions
                tps += [TopicPartition(topic, p) for p in parts]
            return {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=30)}
        finally:
            c.close()

    def end_offsets(self, topic_key):
        """The high watermark of every partition of a topic."""
        topic = self.topics.get(topic_key, topic_key)
        c = Consumer({"bootstrap.servers": self.env["bootstrap"], "group.id": f"w-{uuid.uuid4()}"})
        try:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in sorted(parts)]
        finally:
            c.close()

    def send_control(self, message, key=None):
        """A control message (JSON) on the control topic."""
        self.produce("control", key if key is not None else message.get("user_id", ""),
                     json.dumps(message).encode())
        self.flush()

    def keys(self, redis_client):
        """Every key of this deployment."""
        return list(redis_client.scan_iter(match=f"{self.prefix}:*".encode(), count=1000))

    def due_entries(self, redis_client):
        """Delayed triggers waiting in Redis: [(member as dict, due ms)]."""
        out = []
        for key in redis_client.scan_iter(match=f"{self.prefix}:due:*".encode(), count=1000):
            for member, score in redis_client.zrange(key, 0, -1, withscores=True):
                out.append((json.loads(member), int(score)))
        return out

    # -- Redis ------------------------------------------------------------------------

    def user_key(self, user):
        return f"{self.prefix}:u:{{{user}}}".encode()

    def user_hash(self, redis_client, user):
        return redis_client.hgetall(self.user_key(user))

    def user_keys(self, redis_client):
        return list(redis_client.scan_iter(match=f"{self.prefix}:u:*".encode(), count=1000))

    def bandit_stats(self, redis_client, intent="recommendation"):
        """The bandit's shared counters of an intent: {"<segment>.<locale>.<variant>.<counter>": n}."""
        raw = redis_client.hgetall(f"{self.prefix}:bandit:{{{intent}}}".encode())
        return {k.decode(): int(v) for k, v in raw.items()}

    def outbox_index_entries(self, redis_client):
        """Entries left in the outbox index (copies awaiting deletion)."""
        keys = redis_client.scan_iter(match=f"{self.prefix}:outbox:*".encode(), count=1000)
        return sum(redis_client.zcard(k) for k in keys)


# -- the service's HTTP endpoint ------------------------------------------------------------

def free_port():
    """A TCP port free on the loopback now, for a service's http.port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port, path="/metrics"):
    """GET path from a service's HTTP endpoint: (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(page, name):
    """The value of the series `name` (labels included) on a metrics page; 0 when absent."""
    for line in page.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


# -- user-state blobs, as documented in docs/ARCHITECTURE.md -----------------------------

def decode_seq(blob):
    assert blob[0] == 1 and (len(blob) - 1) % 13 == 0
    out = []
    for off in range(1, len(blob), 13):
        item, ts, etype = struct.unpack_from("<QIB", blob, off)
        out.append((item, ts, EVENT_TYPES[etype]))
    return out


def decode_affinities(blob):
    assert blob[0] == 1 and (len(blob) - 5) % 12 == 0
    ref = struct.unpack_from("<I", blob, 1)[0]
    scores = {}
    for off in range(5, len(blob), 12):
        key, score = struct.unpack_from("<Qf", blob, off)
        scores[key] = score
    return ref, scores


def decode_u64_list(blob):
    assert blob[0] == 1 and (len(blob) - 1) % 8 == 0
    return [struct.unpack_from("<Q", blob, off)[0] for off in range(1, len(blob), 8)]


def decode_seen(blob):
    """The recently seen event ids: (id hash, event time s) pairs, in the order applied."""
    assert blob[0] == 1 and (len(blob) - 1) % 12 == 0
    return [struct.unpack_from("<QI", blob, off) for off in range(1, len(blob), 12)]


# How far two computations of the model's scores may drift apart: a state
# rebuilt with one prefill, or stepped in another batch, holds keys and values
# whose 8-bit quantization can land a step apart, which moves the user state,
# and so the scores, by up to about 1e-4 relative (docs/MODEL.md).
SCORE_REL = 5e-4


def assert_same_ranked(got, want, rel=SCORE_REL):
    """got and want, lists of scored entries (a copy's items or reasons), are
    the same entries in the same order with scores within rel -- except that
    entries whose scores tie within rel may come in either order."""
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want):
        assert abs(g["score"] - w["score"]) <= rel * abs(w["score"]), (got, want)

    def key(x):
        return json.dumps(dict(x, score=None), sort_keys=True)

    i = 0
    while i < len(want):
        j = i + 1
        while j < len(want) and \
                abs(want[j]["score"] - want[i]["score"]) <= rel * abs(want[i]["score"]):
            j += 1
        assert sorted(map(key, got[i:j])) == sorted(map(key, want[i:j])), (got, want)
        i = j
