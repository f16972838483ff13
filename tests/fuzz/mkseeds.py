#!/usr/bin/env python3
"""mkseeds.py -- writes the fuzz targets' seed corpora into tests/fuzz/corpus/.

Seeds are small, valid inputs that reach deep into each parser, for libFuzzer
to mutate: for the codec, framed Avro records written by fastavro (an
independent Avro implementation) with every writer schema of the codec
target's id table (fuzz_codec.c), including edge values; for the template and
config targets, the shipped files with render specs and environments. Run
from the repository root with the test venv, then minimise:

    .venv/bin/python tests/fuzz/mkseeds.py

It only adds files named seed-*; crash reproducers and merged inputs that
libFuzzer named by their SHA-1 are left alone.
"""
import io
import json
import os
import struct

import fastavro

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")

# Must match ids[] in fuzz_codec.c.
SCHEMAS = {
    1: "schemas/ClickEvent.avsc",
    2: "schemas/CatalogItem.avsc",
    3: "schemas/PersonalizedCopy.avsc",
    4: "schemas/Reaction.avsc",
    10: "tests/unit/schemas/ClickEvent.v0.avsc",
    11: "tests/unit/schemas/ClickEvent.v2.avsc",
    12: "tests/unit/schemas/ClickEvent.shuffled.avsc",
    13: "tests/unit/schemas/ClickEvent.userint.avsc",
    14: "tests/unit/schemas/ClickEvent.notimestamp.avsc",
    20: "tests/unit/schemas/CatalogItem.v0.avsc",
    30: "tests/fuzz/schemas/ClickEvent.wide.avsc",
    31: "tests/fuzz/schemas/Reaction.wide.avsc",
    32: "tests/fuzz/schemas/CatalogItem.wide.avsc",
}


def framed(schema_id, record):
    with open(os.path.join(ROOT, SCHEMAS[schema_id])) as f:
        schema = fastavro.parse_schema(json.load(f))
    out = io.BytesIO()
    out.write(b"\x00" + struct.pack(">i", schema_id))
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def click(**kw):
    r = {"event_id": "e-1", "user_id": "u-1", "timestamp": 1767225600000, "type": "VIEW",
         "item_id": "sku-1001", "category": "phones", "price_micros": 1299000000,
         "currency": "CNY", "query": None, "session_id": "s-9", "locale": "zh-CN"}
    r.update(kw)
    return r


def reaction(**kw):
    r = {"reaction_id": "r-1", "copy_id": "clickstream:0:42", "user_id": "u-1",
         "type": "CONVERT", "item_id": "sku-1001", "value": 1299.0,
         "timestamp": 1767225600000}
    r.update(kw)
    return r


def catalog(**kw):
    r = {"item_id": "sku-1001", "titles": {"zh-CN": "轻薄手机", "en-US": "Slim phone"},
         "category": "phones", "brand": "Acme", "price_micros": 1299000000, "currency": "CNY",
         "attributes": [{"id": "hd-screen", "phrases": {"zh-CN": "高清屏幕",
                                                        "en-US": "high-definition screen"}}],
         "available": True, "updated_at": 1767225600000}
    r.update(kw)
    return r


def copy(**kw):
    r = {"copy_id": "clickstream:0:42", "user_id": "u-1", "source_event_id": "e-1",
         "source_topic": "clickstream", "source_partition": 0, "source_offset": 42,
         "locale": "en-US", "text": "You might like Slim phone: it has a high-definition screen.",
         "items": [{"item_id": "sku-1001", "title": "Slim phone", "score": 0.75,
                    "price_micros": 1299000000, "currency": "USD"},
                   {"item_id": "sku-7", "title": None, "score": float("nan"),
                    "price_micros": None, "currency": None}],
         "reasons": [{"code": "attribute_match", "attribute_id": "hd-screen",
                      "text": "high-definition screen", "score": 2.5},
                     {"code": "category_affinity", "attribute_id": None, "text": "",
                      "score": -0.0}],
         "intent": "recommendation", "template_id": "recommendation.en-US.a", "variant_id": "a",
         "strategy": "affinity", "model_version": None, "created_at": 1767225600123}
    r.update(kw)
    return r


def context(depth):
    node = {"tags": ["a", "🙂"], "score": 1.5, "digest": b"\x00\x01\x02\x03", "flag": True,
            "raw": b"\xff\x00", "nothing": None, "child": None, "extra": {"k": 1.0, "n": None}}
    for _ in range(depth):
        node = dict(node, child=node, tags=[], extra={})
    return node


def codec_seeds():
    wide_click = {"event_id": "e-2", "user_id": "u-2", "timestamp": 2000000000, "type": "CLICK",
                  "item_id": "sku-2", "category": None, "price_micros": 5, "context": context(3),
                  "locale": "en-US"}
    return {
        "click-all-fields": framed(1, click()),
        "click-optional-absent": framed(1, click(item_id=None, category=None, price_micros=None,
                                                 currency=None, session_id=None, locale=None,
                                                 type="SEARCH", query="手机 壳")),
        "click-extremes": framed(1, click(timestamp=-(2**63), price_micros=2**63 - 1,
                                          type="FAVORITE", event_id="e" * 200)),
        "click-empty-user": framed(1, click(user_id="")),
        "click-v0": framed(10, {"event_id": "e-3", "user_id": "u-3", "timestamp": 1, "type":
                                "PURCHASE", "item_id": "i", "category": None,
                                "price_micros": 100, "query": None}),
        "click-v2-share": framed(11, dict(click(type="SHARE"), device="ios", referrer="ad")),
        "click-v2": framed(11, dict(click(), device="android", referrer=None)),
        "click-shuffled": framed(12, {"type": "ADD_TO_CART", "user_id": "u-4", "event_id": "e-4",
                                      "timestamp": 7, "locale": "zh-CN", "item_id": None,
                                      "price_micros": 2**31 - 1}),
        "click-userint": framed(13, {"event_id": "e", "user_id": 5, "timestamp": 1,
                                     "type": "VIEW"}),
        "click-notimestamp": framed(14, {"event_id": "e", "user_id": "u", "type": "VIEW"}),
        "click-wide": framed(30, wide_click),
        "click-wide-unknown-symbol": framed(30, dict(wide_click, type="SHARE",
                                                     price_micros=2**40, category="c")),
        "reaction-all-fields": framed(4, reaction()),
        "reaction-optional-absent": framed(4, reaction(copy_id=None, item_id=None, value=None,
                                                       type="UNSUBSCRIBE")),
        "reaction-nan-value": framed(4, reaction(value=float("nan"), type="DISMISS")),
        "reaction-wide": framed(31, {"type": "CLICK", "user_id": "u", "reaction_id": "r",
                                     "copy_id": "c", "value": 0.5, "timestamp": -1,
                                     "blanks": [None] * 20, "item_id": None}),
        "reaction-wide-long-copy-id": framed(31, {"type": "SHARE", "user_id": "u",
                                                  "reaction_id": "r", "copy_id": 7, "value": 1,
                                                  "timestamp": 0, "blanks": [],
                                                  "item_id": "i"}),
        "catalog-all-fields": framed(2, catalog()),
        "catalog-minimal": framed(2, catalog(titles={}, attributes=[], category=None, brand=None,
                                             price_micros=None, currency=None, available=False)),
        "catalog-v0": framed(20, {"item_id": "sku-3", "titles": {"en-US": "Case"},
                                  "category": None, "brand": "B", "price_micros": None,
                                  "currency": None, "updated_at": 3}),
        "catalog-wide": framed(32, {"item_id": "sku-4", "titles": {"zh-CN": "耳机"},
                                    "brand": "Acme", "price_micros": 199,
                                    "attributes": [{"weight": 0.5, "phrases": {"en-US": "quiet"},
                                                    "id": "anc"}],
                                    "images": [{"url": "u", "size": b"12345678"}],
                                    "updated_at": 9}),
        "copy-all-fields": framed(3, copy()),
        "copy-minimal": framed(3, copy(items=[], reasons=[], model_version="m-1",
                                       source_partition=-1)),
        "copy-item-id-nul": framed(3, copy(items=[dict(copy()["items"][0], item_id="a\0b")])),
        "copy-reason-text-nul": framed(3, copy(reasons=[dict(copy()["reasons"][0],
                                                             text="x\0y")])),
        "frame-only": b"\x00\x00\x00\x00\x01",
        "unknown-id": b"\x00\x7f\xff\xff\xff\x02",
        "bad-magic": b"\x01" + framed(1, click())[1:],
    }


def read(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return f.read()


def template_seeds():
    shipped = read("config/templates.conf")
    sep = b"\n#render\n"
    item = b"THigh-definition phone\0P1299000000\0YCNY\0"
    return {
        "shipped": shipped,
        "shipped-zh-render": shipped + sep + b"LzH-CN\0Nrecommendation\0C1\0" + item +
        b"T\xe8\x80\xb3\xe6\x9c\xba\0Rquiet\0R\0",
        "shipped-en-render": shipped + sep + b"Len-US\0C3\0" + item +
        b"U\0P-5000\0YEUR\0Rhigh-definition screen\0E\0Rlong battery\0",
        "shipped-no-fallback": b"[recommendation.fr-FR.a]\ntext = {item.price} {{x}} "
        b"{reasons|} {items.titles}\n  continued line\n  \xe7\xbb\xad\n" + sep +
        b"Lfr-FR\0T\0P9223372036854775807\0YJPY\0",
        "errors": b"[a.b]\ntext = x\n[recommendation.en-US.a]\ntext = {item.title\n",
    }


def config_seeds():
    shipped = read("config/copystream.conf")
    sep = b"\n#env\n"
    return {
        "shipped": shipped,
        "shipped-env": shipped + sep + b"REDIS_PORT=6380\0COPY_MIN__INTERVAL__S=300\0"
        b"KAFKA_BOOTSTRAP_SERVERS=b:9092\0CONFIG=/x\0SCHEMA_ID_7=x.avsc\0",
        "kafka-families": b"[kafka]\nconsumer.fetch.wait.max.ms = 5\nproducer.linger.ms = 1\n"
        b"security.protocol = SASL_SSL\nsasl.password = x\n[schema.id]\n12 = A.avsc\n"
        b"[copy]\nlocales = en-US , zh-CN\ntrigger_types = view,purchase\n",
        "errors": b"[redis]\nport = 70000\n" + sep + b"REDIS_PROT=1\0",
        "env-only": sep + b"COPY_LOCALES=fr-FR\0COPY_DEFAULT__LOCALE=fr-FR\0KAFKA_ACKS=1\0",
        "set-twice": b"[redis]\nport = 1\nport = 2\n",
        "long-line": b"[topic]\ncopy = " + b"c" * 300 + b"\n",
        "schema-id-empty": b"[schema]\nid.5 =\n",
        "delivery-guards": b"[kafka]\nenable.auto.commit = true\n",
        "delivery-guards-env": sep + b"KAFKA_PRODUCER_ENABLE_IDEMPOTENCE=false\0",
        "set": shipped + sep + b"REDIS_PORT=1\0" + b"\n#set\n" +
        b"copy.locales\0zh-CN\0copy.default_locale\0zh-CN\0copy.locales\0en-US\0"
        b"kafka.group.id\0g\0schema.id.9\0X.avsc\0redis.port\00x10\0",
    }


def write(target, seeds):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, "seed-" + name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    write("codec", codec_seeds())
    write("template", template_seeds())
    write("config", config_seeds())
