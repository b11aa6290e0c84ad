"""The dataset store, the same tests against a local directory and an S3 bucket on a loopback moto server."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import polars as pl
import pytest
from conftest import BUCKET

from alignflow.engine.store import OUTCOMES, Store, batch_key
from alignflow.records import schema_for


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    """A fresh, empty store: a tmp dir, or a new prefix in the moto bucket."""
    if request.param == "local":
        return Store(str(tmp_path / "store"))
    request.getfixturevalue("s3_server")
    return Store(f"s3://{BUCKET}/{uuid.uuid4().hex}")


def _frame(start: int = 0, n: int = 3) -> pl.DataFrame:
    ids = list(range(start, start + n))
    return pl.DataFrame({
        "id": ids,
        "text": [f"row {i}" for i in ids],
        "tags": [[f"t{i}"] * (i % 3) for i in ids],
        "meta": [{"score": i / 2, "source": "seed"} for i in ids],
    })


def test_batch_key():
    assert batch_key("run1", "instructions", "kept", 7) == "run1/instructions/kept/batch-00007.parquet"
    assert OUTCOMES == ("kept", "rejected", "failed", "quarantine")


def test_join(store):
    assert store.join("run1", "instructions/kept") == f"{store.url}/run1/instructions/kept"
    assert store.join() == store.url


def test_parquet_roundtrip(store):
    df = _frame()
    key = batch_key("run1", "instructions", "kept", 0)
    store.write_parquet(key, df)
    back = store.read_parquet(key)
    assert back.schema == df.schema
    assert back.equals(df)
    assert back["tags"].dtype == pl.List(pl.String)
    assert isinstance(back["meta"].dtype, pl.Struct)


def test_overwrite_reads_new_content(store):
    store.write_parquet("run1/x.parquet", _frame(0, 2))
    store.write_parquet("run1/x.parquet", _frame(10, 4))
    assert store.read_parquet("run1/x.parquet")["id"].to_list() == [10, 11, 12, 13]


def test_read_dir_concat_in_name_order(store):
    for n in (2, 0, 1):
        store.write_parquet(batch_key("run1", "responses", "kept", n), _frame(10 * n, 2))
    store.write_parquet("run1/responses/kept/nested/batch-99999.parquet", _frame(99, 1))
    store.write_json("run1/responses/kept/notes.json", {"ignored": True})
    df = store.read_dir("run1/responses/kept")
    assert df["id"].to_list() == [0, 1, 10, 11, 20, 21]
    assert store.read_dir("run1/responses/kept/").equals(df)


def test_read_dir_empty_with_schema(store):
    schema = {"id": pl.Int64, "text": pl.String, "tags": pl.List(pl.String)}
    empty = store.read_dir("run1/responses/rejected", schema=schema)
    assert empty.height == 0
    assert empty.schema == pl.Schema(schema)
    assert store.read_dir("nothing/here").shape == (0, 0)


def test_read_dir_with_schema_reads_batches_an_older_version_wrote(store):
    """A resumed run reads batches written before a column, a struct field or a wider number type was added."""
    schema = {"id": pl.String, "n": pl.Int64, "scores": pl.Struct({"a": pl.Float64, "b": pl.Float64}),
              "reason": pl.String}
    old = pl.DataFrame({"id": ["x"], "n": [1], "scores": [{"a": 2.0}]},
                       schema={"id": pl.String, "n": pl.Int32, "scores": pl.Struct({"a": pl.Float32})})
    store.write_parquet(batch_key("run1", "judgments", "kept", 0), old)
    store.write_parquet(batch_key("run1", "judgments", "kept", 1),
                        pl.DataFrame([{"id": "y", "n": 2, "scores": {"a": 3.0, "b": 4.0}, "reason": None}],
                                     schema=schema))
    rows = store.read_dir("run1/judgments/kept", schema=schema)
    assert rows.schema == pl.Schema(schema)
    assert rows.to_dicts() == [{"id": "x", "n": 1, "scores": {"a": 2.0, "b": None}, "reason": None},
                               {"id": "y", "n": 2, "scores": {"a": 3.0, "b": 4.0}, "reason": None}]


def test_json_roundtrip(store):
    obj = {"stage": "seeds", "inputs": 12, "note": "ünïcode", "nested": {"b": [1, 2], "a": None}}
    store.write_json("run1/seeds/stage.json", obj)
    assert store.read_json("run1/seeds/stage.json") == obj


def test_exists_list_delete_prefix(store):
    keys = [batch_key("run1", "seeds", "kept", 0), batch_key("run1", "seeds", "failed", 0),
            batch_key("run1", "pairs", "kept", 0)]
    for key in keys:
        store.write_parquet(key, _frame())
    store.write_json("run1/seeds/stage.json", {"inputs": 3})
    store.write_json("run10/manifest.json", {})

    assert store.exists("run1/seeds/stage.json")
    assert not store.exists("run1/seeds/missing.json")
    assert not store.exists("run1/seeds")  # a directory is not a file
    assert store.list("run1/seeds/") == sorted(keys[:2] + ["run1/seeds/stage.json"])
    assert store.list("run1") == sorted(keys + ["run1/seeds/stage.json"])  # not run10
    assert store.list("nothing") == []

    store.delete_prefix("run1/seeds/")
    assert store.list("run1") == [keys[2]]
    assert store.list("run10") == ["run10/manifest.json"]
    store.delete_prefix("nothing/here")  # no error


def test_missing_key_raises_with_full_url(store):
    for read in (store.read_parquet, store.read_json):
        with pytest.raises(FileNotFoundError) as err:
            read("run1/absent.parquet")
        assert store.join("run1/absent.parquet") in str(err.value)


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_local_leaves_no_temp_files(tmp_path):
    store = Store(str(tmp_path))
    store.write_parquet("run1/a/batch-00000.parquet", _frame())
    store.write_json("run1/a/stage.json", {"inputs": 1})
    assert _all_files(tmp_path) == ["run1/a/batch-00000.parquet", "run1/a/stage.json"]


def test_local_unserializable_write_leaves_nothing(tmp_path):
    store = Store(str(tmp_path))
    bad = pl.DataFrame({"obj": [object(), object()]}, schema={"obj": pl.Object})
    with pytest.raises(Exception):
        store.write_parquet("run1/a/batch-00000.parquet", bad)
    assert _all_files(tmp_path) == []


def test_local_failed_replace_keeps_old_file(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    store.write_json("run1/stage.json", {"v": 1})

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        store.write_json("run1/stage.json", {"v": 2})
    with pytest.raises(OSError, match="disk gone"):
        store.write_parquet("run1/new.parquet", _frame())
    monkeypatch.undo()
    assert _all_files(tmp_path) == ["run1/stage.json"]
    assert store.read_json("run1/stage.json") == {"v": 1}


def test_local_listings_skip_hidden_files(tmp_path):
    store = Store(str(tmp_path))
    store.write_parquet("run1/kept/batch-00000.parquet", _frame())
    (tmp_path / "run1/kept/.batch-00001.parquet.abc.tmp").write_bytes(b"partial")
    assert store.list("run1") == ["run1/kept/batch-00000.parquet"]
    assert store.read_dir("run1/kept").height == 3


def test_checking_a_new_store_from_many_runs_at_once_makes_and_removes_nothing(tmp_path):
    """Two runs starting at once on a store not made yet: neither check may pull a directory out from under the
    other (a check that made and removed the store failed the other run's probe, and could delete what it wrote)."""
    from concurrent.futures import ThreadPoolExecutor

    store = Store(str(tmp_path / "new" / "runs"))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: store.check_writable(), range(64)))  # raises if any probe failed
    assert list(tmp_path.iterdir()) == []  # nothing made, nothing left
    (tmp_path / "kept").mkdir()
    Store(str(tmp_path / "kept")).check_writable()
    assert list((tmp_path / "kept").iterdir()) == []


def test_more_batches_than_one_s3_listing_page(store):
    """S3 lists at most 1,000 keys a page: a stage with more batches is read, scanned and removed whole."""
    n = 1_005
    for i in range(n):
        store.write_parquet(batch_key("big", "responses", "kept", i), pl.DataFrame({"id": [str(i)]}))
    assert len(store.list_dir("big/responses/kept")) == len(store.list("big/")) == n
    rows = store.read_dir("big/responses/kept", schema=schema_for("responses"))
    assert rows["id"].to_list() == [str(i) for i in range(n)] and rows.columns == list(schema_for("responses"))
    assert store.scan_dir("big/responses/kept", schema=schema_for("responses")).select(pl.len()).collect().item() == n
    store.delete_prefix("big/")
    assert store.list("big/") == []
