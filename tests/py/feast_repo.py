"""A small Feast feature repo (file offline source, Redis online store) and the ferry
features.yaml that describes the same views, for test_feast.py and loadtests/feast_bench.py.

The Feast side is the real `feast` package: `feast apply` / `feast materialize*` run its CLI,
and reads go through `FeatureStore.get_online_features`.
"""
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq

PROJECT = "shop"

# One view per kind of key: a string join key with every scalar and list type, and a compound
# key (string + int64). TTL 1 day on user_stats so that a 3-day-old row is expired.
DEFINITIONS = """\
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Bool, Bytes, Float32, Float64, Int32, Int64, String

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.INT64)

user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    ttl=timedelta(days=1),
    schema=[
        Field(name="visits_7d", dtype=Float32),
        Field(name="spend_30d", dtype=Float64),
        Field(name="orders", dtype=Int64),
        Field(name="age", dtype=Int32),
        Field(name="country", dtype=String),
        Field(name="vip", dtype=Bool),
        Field(name="blob", dtype=Bytes),
        Field(name="scores", dtype=Array(Float32)),
        Field(name="weights", dtype=Array(Float64)),
        Field(name="counts", dtype=Array(Int64)),
        Field(name="small", dtype=Array(Int32)),
        Field(name="tags", dtype=Array(String)),
        Field(name="flags", dtype=Array(Bool)),
        Field(name="blobs", dtype=Array(Bytes)),
    ],
    source=FileSource(path=r"{user_stats}", timestamp_field="event_ts"),
    online=True,
)

# A second view of the same entity: Feast keeps both views' fields in one hash per user.
user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    schema=[Field(name="segment", dtype=String), Field(name="tenure", dtype=Int64)],
    source=FileSource(path=r"{user_profile}", timestamp_field="event_ts"),
    online=True,
)

pair_stats = FeatureView(
    name="pair_stats",
    entities=[user, merchant],
    ttl=timedelta(days=30),
    schema=[Field(name="pair_spend", dtype=Float64), Field(name="pair_orders", dtype=Int64)],
    source=FileSource(path=r"{pair_stats}", timestamp_field="event_ts"),
    online=True,
)
"""

FERRY_REPO = """\
project: shop
online_format: feast
entity_key_serialization_version: 3
entities:
  - {name: user, join_key: user_id, dtype: string}
  - {name: merchant, join_key: merchant_id, dtype: int64}
views:
  - name: user_stats
    entity: user
    ttl: 1d
    features:
      - {name: visits_7d, dtype: float32}
      - {name: spend_30d, dtype: float64}
      - {name: orders, dtype: int64}
      - {name: age, dtype: int32}
      - {name: country, dtype: string}
      - {name: vip, dtype: bool}
      - {name: blob, dtype: bytes}
      - {name: scores, dtype: "list<float32>"}
      - {name: weights, dtype: "list<float64>"}
      - {name: counts, dtype: "list<int64>"}
      - {name: small, dtype: "list<int32>"}
      - {name: tags, dtype: "list<string>"}
      - {name: flags, dtype: "list<bool>"}
      - {name: blobs, dtype: "list<bytes>"}
    source: {path: data/user_stats.parquet, timestamp: event_ts}
  - name: user_profile
    entity: user
    features:
      - {name: segment, dtype: string}
      - {name: tenure, dtype: int64}
    source: {path: data/user_profile.parquet, timestamp: event_ts}
  - name: pair_stats
    entities: [user, merchant]
    ttl: 30d
    features:
      - {name: pair_spend, dtype: float64}
      - {name: pair_orders, dtype: int64}
    source: {path: data/pair_stats.parquet, timestamp: event_ts}
"""

USER_FEATURES = ["visits_7d", "spend_30d", "orders", "age", "country", "vip", "blob", "scores",
                 "weights", "counts", "small", "tags", "flags", "blobs"]
PAIR_FEATURES = ["pair_spend", "pair_orders"]
PROFILE_FEATURES = ["segment", "tenure"]

USER_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("event_ts", pa.timestamp("us", tz="UTC")),
    ("visits_7d", pa.float32()), ("spend_30d", pa.float64()), ("orders", pa.int64()),
    ("age", pa.int32()), ("country", pa.string()), ("vip", pa.bool_()), ("blob", pa.binary()),
    ("scores", pa.list_(pa.float32())), ("weights", pa.list_(pa.float64())),
    ("counts", pa.list_(pa.int64())), ("small", pa.list_(pa.int32())),
    ("tags", pa.list_(pa.string())), ("flags", pa.list_(pa.bool_())),
    ("blobs", pa.list_(pa.binary())),
])
PROFILE_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("event_ts", pa.timestamp("us", tz="UTC")),
    ("segment", pa.string()), ("tenure", pa.int64()),
])
PAIR_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("merchant_id", pa.int64()),
    ("event_ts", pa.timestamp("us", tz="UTC")), ("pair_spend", pa.float64()),
    ("pair_orders", pa.int64()),
])


def write_parquet(path, schema, rows):
    """rows: dicts keyed by column name (missing keys are null)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cols = {f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in schema}
    pq.write_table(pa.table(cols, schema=schema), path)


def write_repo(root, redis_port, user_rows, pair_rows, profile_rows=()):
    """Writes the Feast repo (feature_store.yaml, definitions.py, Parquet data) and ferry's
    features.yaml for the same data into `root`; returns (feast repo dir, ferry repo path)."""
    data = os.path.join(root, "data")
    user_path = os.path.join(data, "user_stats.parquet")
    pair_path = os.path.join(data, "pair_stats.parquet")
    write_parquet(user_path, USER_SCHEMA, user_rows)
    write_parquet(pair_path, PAIR_SCHEMA, pair_rows)
    profile_path = os.path.join(data, "user_profile.parquet")
    write_parquet(profile_path, PROFILE_SCHEMA, list(profile_rows))
    feast_dir = os.path.join(root, "feast_repo")
    os.makedirs(feast_dir, exist_ok=True)
    with open(os.path.join(feast_dir, "feature_store.yaml"), "w") as f:
        f.write(textwrap.dedent(f"""\
            project: {PROJECT}
            registry: {os.path.join(root, "registry.db")}
            provider: local
            online_store:
              type: redis
              connection_string: "127.0.0.1:{redis_port}"
            offline_store:
              type: file
            entity_key_serialization_version: 3
            """))
    with open(os.path.join(feast_dir, "definitions.py"), "w") as f:
        f.write(DEFINITIONS.format(user_stats=user_path, pair_stats=pair_path,
                                   user_profile=profile_path))
    ferry_repo = os.path.join(root, "features.yaml")
    with open(ferry_repo, "w") as f:
        f.write(FERRY_REPO)
    return feast_dir, ferry_repo


def feast_cli(feast_dir, *args):
    """Runs the real `feast` CLI (the one installed with the package) in the repo."""
    cmd = [sys.executable, "-m", "feast.cli.cli", *args]
    r = subprocess.run(cmd, cwd=feast_dir, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise AssertionError(f"feast {' '.join(args)} failed ({r.returncode}):\n"
                             f"{r.stdout}\n{r.stderr}")
    return r.stdout
