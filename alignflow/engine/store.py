"""The dataset store: a directory URL, either a local path or ``s3://bucket/prefix``.

Keys are relative, "/"-separated paths such as ``run1/instructions/kept/batch-00000.parquet``.
Every write is atomic: locally a hidden temp file in the same directory is renamed into place,
on S3 the object is sent in a single PUT. The one exception is a local `Appender` (a batch's answer log), whose
reader ignores a torn last line. A missing key raises FileNotFoundError naming its full URL.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import polars as pl

from alignflow.records import OUTCOMES, SCHEMAS, schema_for

Writer = Callable[[IO[bytes]], None]
# batches written by an older alignflow may lack a column or a struct field, or have a narrower number type
OLDER_BATCHES = pl.ScanCastOptions(integer_cast="upcast", float_cast="upcast", missing_struct_fields="insert",
                                   extra_struct_fields="ignore")


def batch_key(run_id: str, stage: str, outcome: str, n: int) -> str:
    """Key of batch ``n`` of one outcome of a stage."""
    return f"{run_id}/{stage}/{outcome}/batch-{n:05d}.parquet"


class Conflict(Exception):
    """A conditional write lost: what is stored is not what the writer last saw."""


class StoreError(Exception):
    """A store that cannot be used (its URL) or written: one line saying why."""


STORES = "a local path or s3://bucket/prefix"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# AWS's rules, which S3-compatible servers follow: 3-63 lowercase letters, digits, dots, hyphens; a letter or digit
# at each end
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_url(url: str) -> tuple[str, str]:
    """The bucket and key prefix of a store URL, checked: one that names no store alignflow can use is a StoreError
    naming it (`gs://...` or `file://` is not taken for a local directory named `gs:`, nor `s3:///x` for a bucket
    named `s3:`). ("", path) for a local path."""
    from alignflow.config import abbreviated
    from alignflow.llm.remote import redact

    shown = redact(abbreviated(url))
    if not url.strip():
        raise StoreError(f"the store is empty: give {STORES}")
    if not url.startswith("s3://"):
        if ":" not in url.split("/", 1)[0]:
            return "", url
        scheme = _SCHEME.match(url)
        named = f"unknown scheme {scheme[1]!r}" if scheme else "not a path (a ':' before the first '/') nor a URL"
        raise StoreError(f"store {shown!r}: {named}; a store is {STORES}")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise StoreError(f"store {shown!r} names no bucket: give s3://bucket/prefix")
    if "@" in bucket:
        raise StoreError(f"store {shown!r}: the URL holds a user name or password; S3 credentials come from the "
                         "AWS_* environment variables, never from the URL")
    if not _BUCKET.match(bucket):
        raise StoreError(f"store {shown!r}: {abbreviated(bucket)!r} is not a valid S3 bucket name (3 to 63 "
                         "lowercase letters, digits, dots and hyphens, a letter or digit at each end)")
    return bucket, prefix.rstrip("/")


def _dir_prefix(key_prefix: str) -> str:
    """A key prefix as a directory: no leading slash, one trailing slash (empty for the root)."""
    key_prefix = key_prefix.strip("/")
    return f"{key_prefix}/" if key_prefix else ""


class Appender:
    """A local file only ever added to. Each `write` is handed to the OS at once, so a killed process loses none of
    it (the kernel writes it out); `sync` is fsync, which a power loss needs too and which costs a disk flush."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._dir_synced = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def sync(self) -> None:
        os.fsync(self._fd)
        if not self._dir_synced:  # the file's name in its directory, once
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            self._dir_synced = True

    def close(self) -> None:
        os.close(self._fd)


class _Local:
    """Files under a local directory."""

    def __init__(self, url: str):
        self.url = url
        self.root = Path(url)

    def join(self, key: str) -> str:
        return os.path.join(self.url, key) if key else self.url

    def write(self, key: str, writer: Writer) -> None:
        """Write to a hidden temp file beside the target, then rename it into place."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                writer(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _existing(self, key: str) -> Path:
        path = self.root / key
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {self.join(key)}")
        return path

    def read_bytes(self, key: str) -> bytes:
        return self._existing(key).read_bytes()

    def appender(self, key: str) -> Appender:
        return Appender(self.root / key)

    def read_parquet(self, key: str) -> pl.DataFrame:
        return pl.read_parquet(self._existing(key))

    def scan_parquet(self, key: str | list[str], **options: Any) -> pl.LazyFrame:
        keys = [key] if isinstance(key, str) else key
        return pl.scan_parquet([self._existing(k) for k in keys], **options)

    def row_count(self, key: str) -> int:
        return self.scan_parquet(key).select(pl.len()).collect().item()

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        path = self.root / key
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def put_if(self, key: str, data: bytes, version: str | None) -> str:
        """Under an exclusive lock on a file beside it: compare what is there, then write."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = self.read_versioned(key)
            if (found[1] if found else None) != version:
                raise Conflict(f"{self.join(key)} changed")
            self.write(key, lambda f: f.write(data))
        return hashlib.sha256(data).hexdigest()

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            rel = "" if rel == "." else f"{rel}/"
            keys += [rel + name for name in filenames if not name.startswith(".")]
        return sorted(keys)

    def list_dir(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(prefix + p.name for p in base.iterdir() if p.is_file() and not p.name.startswith("."))

    def delete_prefix(self, prefix: str) -> None:
        base = self.root / prefix
        if prefix and base.is_dir():
            shutil.rmtree(base)
        elif not prefix:  # the whole store: empty the directory, keep it
            for key in self.list(""):
                (self.root / key).unlink()


OUTAGE_S = 120.0  # how long a store request keeps trying while S3 cannot be reached


def _patient(method: Callable) -> Callable:
    """Tried again, with jittered backoff, for up to `patience_s` while the S3 endpoint cannot be reached, so a
    run rides out a short outage of its store (botocore's own retries share a quota an outage drains in seconds)."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        from botocore.exceptions import ConnectionError as Unreachable
        from botocore.exceptions import HTTPClientError
        from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

        for attempt in Retrying(retry=retry_if_exception_type((Unreachable, HTTPClientError)), reraise=True,
                                wait=wait_random_exponential(multiplier=0.5, max=10),
                                stop=stop_after_delay(self.patience_s)):
            with attempt:
                return method(self, *args, **kwargs)

    return call


class _S3:
    """Objects under ``s3://bucket/prefix``; one boto3 client per store, from the standard AWS env."""

    def __init__(self, url: str, patience_s: float = OUTAGE_S):
        import boto3

        self.url, self.patience_s = url.rstrip("/"), patience_s
        self.bucket, prefix = parse_url(url)
        self.prefix = _dir_prefix(prefix)
        self.client = boto3.client("s3")  # reads AWS_ENDPOINT_URL, credentials and region from the env

    def join(self, key: str) -> str:
        return f"{self.url}/{key}" if key else self.url

    def appender(self, key: str) -> None:
        return None  # an object is written whole, never added to

    def _object_key(self, key: str) -> str:
        return self.prefix + key

    @_patient
    def write(self, key: str, writer: Writer) -> None:
        """Serialize into memory, then send a single PUT (atomic on S3)."""
        buf = io.BytesIO()
        writer(buf)
        self.client.put_object(Bucket=self.bucket, Key=self._object_key(key), Body=buf.getvalue())

    @_patient
    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"no such object: {self.join(key)}") from None

    def read_parquet(self, key: str) -> pl.DataFrame:
        # Polars reads the s3:// URL itself (its object store), with options from the same env;
        # this works against moto too, so the boto3 get_object fallback is not needed.
        try:
            return pl.read_parquet(self.join(key), storage_options=self.storage_options())
        except FileNotFoundError:
            raise FileNotFoundError(f"no such object: {self.join(key)}") from None

    def scan_parquet(self, key: str | list[str], **options: Any) -> pl.LazyFrame:
        urls = self.join(key) if isinstance(key, str) else [self.join(k) for k in key]
        return pl.scan_parquet(urls, storage_options=self.storage_options(), **options)

    def row_count(self, key: str) -> int:
        """From the Parquet footer alone: polars fetches only the metadata."""
        try:
            return self.scan_parquet(key).select(pl.len()).collect().item()
        except FileNotFoundError:
            raise FileNotFoundError(f"no such object: {self.join(key)}") from None

    @_patient
    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    @_patient
    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            found = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except self.client.exceptions.NoSuchKey:
            return None
        return found["Body"].read(), found["ETag"]

    @_patient
    def put_if(self, key: str, data: bytes, version: str | None) -> str:
        """A conditional PUT: If-None-Match: * when there should be nothing, If-Match: ETag otherwise."""
        from botocore.exceptions import ClientError

        condition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self._object_key(key), Body=data, **condition)["ETag"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict",
                                                              "NoSuchKey", "412", "409"):
                raise Conflict(f"{self.join(key)} changed") from None
            raise

    @staticmethod
    def storage_options() -> dict[str, str]:
        """Polars' object-store options, from the same env variables boto3 reads."""
        env = {
            "aws_endpoint_url": os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
            "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID"),
            "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
            "aws_session_token": os.environ.get("AWS_SESSION_TOKEN"),
            "aws_region": os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION"),
        }
        options = {k: v for k, v in env.items() if v}
        if options.get("aws_endpoint_url", "").startswith("http://"):
            options["aws_allow_http"] = "true"
        return options

    @_patient
    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    @_patient
    def _keys(self, prefix: str, delimiter: str = "") -> list[str]:
        kwargs = {"Bucket": self.bucket, "Prefix": self._object_key(prefix)}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
            keys += [obj["Key"].removeprefix(self.prefix) for obj in page.get("Contents", [])]
        return sorted(keys)

    def list(self, prefix: str) -> list[str]:
        return self._keys(prefix)

    def list_dir(self, prefix: str) -> list[str]:
        return self._keys(prefix, delimiter="/")

    @_patient
    def delete_prefix(self, prefix: str) -> None:
        keys = self._keys(prefix)
        for start in range(0, len(keys), 1000):  # delete_objects takes at most 1000 keys
            chunk = [{"Key": self._object_key(k)} for k in keys[start:start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})


class Store:
    """A pipeline's dataset store at ``url``: a local directory or ``s3://bucket/prefix``."""

    def __init__(self, url: str):
        self.url = url
        self._backend = _S3(url) if parse_url(url)[0] else _Local(url)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def join(self, *parts: str) -> str:
        """Full URL or path of a relative key."""
        return self._backend.join("/".join(p.strip("/") for p in parts if p.strip("/")))

    def write_parquet(self, key: str, df: pl.DataFrame) -> None:
        """Write ``df`` to ``key`` atomically."""
        self._backend.write(key, df.write_parquet)

    def sink_parquet(self, key: str, rows: pl.LazyFrame) -> None:
        """Write a lazy query's rows to ``key`` atomically, streamed: they are never all in memory at once."""
        self._backend.write(key, rows.sink_parquet)

    def read_parquet(self, key: str) -> pl.DataFrame:
        """Read one parquet file."""
        return self._backend.read_parquet(key)

    def scan_parquet(self, key: str) -> pl.LazyFrame:
        """One parquet file as a lazy query: it is read only as far as the query needs (its columns, its rows)."""
        return self._backend.scan_parquet(key)

    def row_count(self, key: str) -> int:
        """Rows of one parquet file, read from its metadata."""
        return self._backend.row_count(key)

    def read_dir(self, key_prefix: str, schema: dict | None = None) -> pl.DataFrame:
        """All ``*.parquet`` directly under ``key_prefix``, concatenated in name order.

        With ``schema``, exactly its columns (null where older batches lack one), also when there are no files;
        without, the union of the files' columns.
        """
        return self.scan_dir(key_prefix, schema).collect()

    def scan_dir(self, key_prefix: str, schema: dict | None = None) -> pl.LazyFrame:
        """``read_dir`` as a lazy query: a file is read only as far as the query needs (its columns, its rows).

        With ``schema``, one scan over every file, cast to it: on S3 that is one object-store client fetching
        the files in parallel, where a scan per file (needed only to union unknown schemas) took 40 s for 1,000
        small batches against 4 s."""
        keys = [k for k in self._backend.list_dir(_dir_prefix(key_prefix)) if k.endswith(".parquet")]
        if not keys:
            return pl.LazyFrame(schema=schema)
        if schema is None:
            return pl.concat([self._backend.scan_parquet(k) for k in keys], how="diagonal_relaxed")
        return self._backend.scan_parquet(keys, schema=schema, missing_columns="insert", extra_columns="ignore",
                                          cast_options=OLDER_BATCHES)

    def write_json(self, key: str, obj: Any) -> None:
        """Write ``obj`` as JSON (indent 2, sorted keys) atomically."""
        self.write_text(key, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def write_text(self, key: str, text: str) -> None:
        """Write ``text`` as UTF-8 atomically."""
        data = text.encode()
        self._backend.write(key, lambda f: f.write(data))

    def read_json(self, key: str) -> Any:
        """Parse the JSON at ``key``."""
        return json.loads(self._backend.read_bytes(key))

    def read_bytes(self, key: str) -> bytes:
        return self._backend.read_bytes(key)

    def appender(self, key: str) -> Appender | None:
        """A file at ``key`` to add to, write by write (`Appender`); None where a file can only be written whole
        (S3). Unlike every other write, an append is not atomic: a reader must expect a torn last write."""
        return self._backend.appender(key)

    def exists(self, key: str) -> bool:
        """Whether a file is stored at ``key``."""
        return self._backend.exists(key)

    def list(self, key_prefix: str) -> list[str]:
        """Sorted keys of all files under ``key_prefix``, recursively."""
        return self._backend.list(_dir_prefix(key_prefix))

    def list_dir(self, key_prefix: str) -> list[str]:
        """Sorted keys of the files directly under ``key_prefix``."""
        return self._backend.list_dir(_dir_prefix(key_prefix))

    def delete(self, key: str) -> None:
        """Delete one file; nothing happens when it is not there."""
        self._backend.delete(key)

    def check_writable(self) -> None:
        """A probe object written and deleted, so a store that cannot take a run says so before a run starts. A local
        store not made yet is probed in its nearest existing directory, where it would be made: the check creates and
        removes no directory, so two runs starting at once on a new store cannot pull one out from under the other."""
        from botocore.exceptions import BotoCoreError, ClientError

        from alignflow.config import abbreviated
        from alignflow.llm.remote import redact

        key = f".alignflow-probe-{uuid.uuid4().hex}"
        try:
            if not self.url.startswith("s3://") and Path(self.url).exists() and not Path(self.url).is_dir():
                raise StoreError(f"the store {self.url} is a file, not a directory")
            if self.url.startswith("s3://"):
                backend = _S3(self.url, patience_s=0)  # a check answers at once
            else:
                backend = _Local(str(_nearest_existing(Path(self.url))))
            backend.write(key, lambda f: f.write(b"probe"))
            backend.delete(key)
        except (OSError, BotoCoreError, ClientError) as exc:
            # botocore's reason whole (a bad parameter is said on the lines after "Parameter validation failed:")
            reason = getattr(exc, "strerror", None) or abbreviated(" ".join(str(exc).split()), 400)
            raise StoreError(f"cannot write to the store {redact(abbreviated(self.url))}: {redact(reason)}") from None

    def read_json_versioned(self, key: str) -> tuple[Any, str] | None:
        """The JSON at `key` and its version (an ETag on S3), or None when there is none."""
        found = self._backend.read_versioned(key)
        return (json.loads(found[0]), found[1]) if found else None

    def write_json_if(self, key: str, obj: Any, version: str | None) -> str:
        """Write only if `key` is still at `version` (None: only if there is nothing): the one writer of several
        that wins. Returns the new version; raises Conflict when another writer got there first."""
        data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
        return self._backend.put_if(key, data, version)

    def delete_prefix(self, key_prefix: str) -> None:
        """Delete every file under ``key_prefix``."""
        self._backend.delete_prefix(_dir_prefix(key_prefix))


def _nearest_existing(path: Path) -> Path:
    """`path`, or the nearest of its parents that exists."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


class RunDirError(ValueError):
    """A RUN_DIR argument that names no run: one line saying why."""


def open_run_dir(run_dir: str) -> tuple[Store, str]:
    """The store holding a run directory (`<store>/<run_id>`, a local path or an s3:// URL), and the run id. A run
    is a directory with a manifest, a lease, or a stage written, finished or not."""
    from alignflow.config import abbreviated

    url, shown = run_dir.rstrip("/"), abbreviated(run_dir)
    try:
        bucket, prefix = parse_url(url)
    except StoreError as exc:
        raise RunDirError(f"not a run directory: {exc}") from None
    if bucket:
        if not prefix:
            raise RunDirError(f"not a run directory: {shown} is a bucket; give s3://bucket/<store>/<run_id>")
        parent, _, run_id = url.rpartition("/")
    else:
        path = Path(url)
        try:
            if not path.is_dir():
                raise RunDirError(f"no such run directory: {shown}")
            if (path / "manifest.json").is_dir():
                raise RunDirError(f"not a run directory: {shown}/manifest.json is a directory, not a manifest")
        except OSError as exc:  # a name too long for the file system
            raise RunDirError(f"no such run directory: {shown} ({exc.strerror})") from None
        parent, run_id = str(path.resolve().parent), path.resolve().name
    store = Store(parent)
    if not RunDir(store, run_id).is_run():
        raise RunDirError(f"not a run directory (no manifest.json, no stage written): {shown}")
    return store, run_id


_BATCH_FILE = re.compile(r"^batch-(\d+)\.(parquet|json)$")


def audit_key(audit_id: str) -> str:
    """Where a judge audit's report goes: beside the runs, not in one."""
    return f"audits/{audit_id}.json"


class RunDir:
    """A run's directory in the store, and the one place its layout is spelled:

        <run>/<stage>/{kept,rejected,failed,quarantine}/batch-NNNNN.parquet   a batch's rows, by outcome
        <run>/<stage>/quarantine/batch-NNNNN.json                           a quarantined batch's gate report
        <run>/<stage>/checkpoints/batch-NNNNN.json                          a finished batch's record
        <run>/<stage>/answers/batch-NNNNN/log-*.jsonl, part-*.parquet      the answers of a batch being made
        <run>/<stage>/stage.json                                            the stage's definition when made
        <run>/{manifest,lease,review,quarantine}.json, <run>/datasets/NAME.parquet, <run>/datasets/README.md
        <run>/endpoints.json                                                the endpoints known to answer the run
    """

    def __init__(self, store: Store, run_id: str):
        self.store, self.run_id = store, run_id

    @property
    def url(self) -> str:
        return self.store.join(self.run_id)

    # -- keys ------------------------------------------------------------------------------------------------------

    def batch_key(self, stage: str, outcome: str, number: int) -> str:
        return batch_key(self.run_id, stage, outcome, number)

    def outcome_dir(self, stage: str, outcome: str = "kept") -> str:
        return f"{self.run_id}/{stage}/{outcome}"

    def stage_dir(self, stage: str) -> str:
        return f"{self.run_id}/{stage}/"

    def report_key(self, stage: str, number: int) -> str:
        """A failed validation's report, beside the quarantined parquet (read_dir reads only *.parquet)."""
        return self.batch_key(stage, "quarantine", number).removesuffix(".parquet") + ".json"

    def checkpoint_key(self, stage: str, number: int) -> str:
        return f"{self.run_id}/{stage}/checkpoints/batch-{number:05d}.json"

    def answers_prefix(self, stage: str, number: int) -> str:
        return f"{self.run_id}/{stage}/answers/batch-{number:05d}/"

    def stage_record_key(self, stage: str) -> str:
        return f"{self.run_id}/{stage}/stage.json"

    def dataset_key(self, name: str) -> str:
        return f"{self.run_id}/datasets/{name}.parquet"

    @property
    def datasets_dir(self) -> str:
        return f"{self.run_id}/datasets"

    @property
    def card_key(self) -> str:
        """The datasets' card, in the Hugging Face dataset-card format, beside them."""
        return f"{self.run_id}/datasets/README.md"

    @property
    def manifest_key(self) -> str:
        return f"{self.run_id}/manifest.json"

    @property
    def lease_key(self) -> str:
        return f"{self.run_id}/lease.json"

    @property
    def review_key(self) -> str:
        return f"{self.run_id}/review.json"

    @property
    def quarantine_key(self) -> str:
        """The hand decisions on quarantined batches, outside every stage directory (a stage rewrites its own)."""
        return f"{self.run_id}/quarantine.json"

    @property
    def endpoints_key(self) -> str:
        """The digests of the endpoints known to answer this run, so that a resume does not make preflight's call
        again."""
        return f"{self.run_id}/endpoints.json"

    @property
    def prefix(self) -> str:
        return f"{self.run_id}/"

    def is_run(self) -> bool:
        """A run is a directory with a manifest, a lease, or a stage written, finished or not."""
        marks = (self.manifest_key, self.lease_key, *(self.stage_record_key(stage) for stage in SCHEMAS))
        return any(self.store.exists(key) for key in marks)

    def stages(self) -> dict[str, list[dict[str, Any]]]:
        """Every stage's batch checkpoints, in pipeline order; a stage with none is left out."""
        return {stage: records for stage in SCHEMAS if (records := self.checkpoints(stage))}

    # -- batches ---------------------------------------------------------------------------------------------------

    def read(self, stage: str, outcome: str = "kept") -> pl.DataFrame:
        """Every batch of one outcome of a stage."""
        return self.store.read_dir(self.outcome_dir(stage, outcome), schema=schema_for(stage))

    def scan(self, stage: str, outcome: str = "kept") -> pl.LazyFrame:
        return self.store.scan_dir(self.outcome_dir(stage, outcome), schema=schema_for(stage))

    def read_batch(self, stage: str, number: int, outcome: str = "kept") -> pl.DataFrame:
        """One batch of one outcome; empty (with the stage's schema) when the batch made no such rows."""
        key = self.batch_key(stage, outcome, number)
        if not self.store.exists(key):
            return pl.DataFrame(schema=schema_for(stage))
        df = self.store.read_parquet(key)
        missing = {n: t for n, t in schema_for(stage).items() if n not in df.columns}
        return df.with_columns(pl.lit(None, t).alias(n) for n, t in missing.items()) if missing else df

    def write_batch(self, stage: str, number: int, outcome: str, rows: pl.DataFrame) -> None:
        """One outcome of a batch; no rows, no file."""
        if rows.height:
            self.store.write_parquet(self.batch_key(stage, outcome, number), rows)
        else:
            self.store.delete(self.batch_key(stage, outcome, number))

    def kept_count(self, stage: str) -> int:
        """Kept rows of a stage, from the Parquet footers."""
        return sum(self.store.row_count(key) for key in self.store.list_dir(self.outcome_dir(stage))
                   if key.endswith(".parquet"))

    # -- checkpoints and stage records -------------------------------------------------------------------------------

    def checkpoint(self, stage: str, number: int) -> dict[str, Any] | None:
        """The record of a finished batch, or None when it is not done."""
        key = self.checkpoint_key(stage, number)
        return self.store.read_json(key) if self.store.exists(key) else None

    def write_checkpoint(self, stage: str, number: int, record: dict[str, Any]) -> None:
        self.store.write_json(self.checkpoint_key(stage, number), record)

    def checkpoints(self, stage: str) -> list[dict[str, Any]]:
        """Every finished batch of a stage, in batch order."""
        keys = [k for k in self.store.list_dir(f"{self.run_id}/{stage}/checkpoints") if k.endswith(".json")]
        return [self.store.read_json(k) for k in keys]

    def clear_batch(self, stage: str, number: int) -> None:
        """Remove what an earlier attempt at a batch wrote (its checkpoint first), before it is made again."""
        self.store.delete(self.checkpoint_key(stage, number))
        for outcome in OUTCOMES:
            self.store.delete(self.batch_key(stage, outcome, number))
        self.store.delete(self.report_key(stage, number))

    def prune(self, stage: str, numbers: set[int]) -> None:
        """Drop the outputs of batches a stage no longer makes (its input shrank); their answers stay."""
        for key in self.store.list(self.stage_dir(stage)):
            match = _BATCH_FILE.match(key.rsplit("/", 1)[-1])  # outputs and checkpoints; answers are `part-*`
            if match and int(match[1]) not in numbers:
                self.store.delete(key)

    def stage_record(self, stage: str) -> dict[str, Any] | None:
        key = self.stage_record_key(stage)
        return self.store.read_json(key) if self.store.exists(key) else None

    def write_stage_record(self, stage: str, record: dict[str, Any]) -> None:
        self.store.write_json(self.stage_record_key(stage), record)

    def read_json(self, key: str, default: Any = None) -> Any:
        """A run-level JSON file (`manifest_key`, `review_key`, ...), or `default` when there is none."""
        return self.store.read_json(key) if self.store.exists(key) else default
