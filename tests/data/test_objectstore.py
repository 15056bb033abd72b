"""The object store of shared model versions (a local path here; any pyarrow filesystem URL):
commit by marker, invisible partial uploads, fetch into a local cache, deletion, refusals."""

from __future__ import annotations

import pytest

from scalerec.data.objectstore import ObjectStore
from scalerec.errors import ConfigError, StorageError


def _version(d, files: dict[str, bytes]):
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    return d


def test_publish_fetch_delete(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    store.check()
    src = _version(tmp_path / "src", {"model/arrays.npy": b"x" * 1000, "popular.npy": b"p", "manifest.json": b"{}"})
    assert not store.committed("v0001")
    assert store.publish(src, "v0001") == 1003
    assert store.committed("v0001")
    cache = tmp_path / "cache" / "v0001"
    cache.parent.mkdir()
    assert store.fetch("v0001", cache) == cache
    assert (cache / "model" / "arrays.npy").read_bytes() == b"x" * 1000
    assert sorted(p.name for p in cache.parent.iterdir()) == ["v0001"], "no temporary left behind"
    store.delete("v0001")
    assert not store.committed("v0001")
    with pytest.raises(StorageError, match="not in the object store"):
        store.fetch("v0001", tmp_path / "cache" / "again")


def test_an_upload_without_its_marker_is_not_a_version(tmp_path):
    store = ObjectStore(str(tmp_path / "store"))
    src = _version(tmp_path / "src", {"model/arrays.npy": b"x"})  # interrupted before the manifest
    with pytest.raises(StorageError, match="no manifest.json"):
        store.publish(src, "v0002")
    (tmp_path / "store" / "v0002").mkdir(parents=True)
    (tmp_path / "store" / "v0002" / "model.npy").write_bytes(b"half")
    assert not store.committed("v0002")


def test_refusals_name_the_url_without_secrets(tmp_path):
    with pytest.raises(ConfigError, match="object store URL"):
        ObjectStore("nosuchscheme://bucket/prefix")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="store_url"):
        ObjectStore(str(blocker)).check()


def test_the_same_protocol_on_a_real_s3_compatible_server(s3_server, tmp_path):
    store = ObjectStore(s3_server.bucket_url("models"))
    store.check()
    src = _version(tmp_path / "src", {"model/arrays.npy": b"y" * 3000, "manifest.json": b"{}"})
    store.publish(src, "v0001")
    assert store.committed("v0001") and not store.committed("v0002")
    cache = tmp_path / "cache" / "v0001"
    cache.parent.mkdir()
    store.fetch("v0001", cache)
    assert (cache / "model" / "arrays.npy").read_bytes() == b"y" * 3000
    store.delete("v0001")
    assert not store.committed("v0001")


def test_an_unreachable_s3_endpoint_names_the_url_and_the_fix(tmp_path):
    from _servers import free_port

    store = ObjectStore(f"s3://bucket/p?endpoint_override=127.0.0.1:{free_port()}&scheme=http&region=us-east-1"
                        "&connect_timeout=1&request_timeout=1")
    with pytest.raises(StorageError, match="endpoint_override") as err:
        store.check()
    assert "bucket/p" in err.value.message


def test_a_model_file_above_the_multipart_threshold_round_trips_on_s3(s3_server, tmp_path):
    # pyarrow's S3 output stream uploads parts of 10 MiB; 26 MiB is three parts (a multipart
    # upload, completed by CompleteMultipartUpload), the marker one PutObject
    import boto3
    import numpy as np

    url = s3_server.bucket_url()
    store = ObjectStore(url)
    big = np.random.default_rng(5).integers(0, 256, 26 << 20, dtype=np.uint8).tobytes()
    src = _version(tmp_path / "src", {"model/factors.npy": big, "manifest.json": b"{}"})
    assert store.publish(src, "v0001") == len(big) + 2
    s3 = boto3.client("s3", endpoint_url=f"http://{s3_server.endpoint}", region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    bucket, prefix = url[len("s3://"):].split("?")[0].split("/", 1)
    head = s3.head_object(Bucket=bucket, Key=f"{prefix}/v0001/model/factors.npy")
    assert head["ContentLength"] == len(big)
    assert head["ETag"].strip('"').endswith("-3"), "uploaded in three parts"
    cache = tmp_path / "cache" / "v0001"
    cache.parent.mkdir()
    store.fetch("v0001", cache)
    assert (cache / "model" / "factors.npy").read_bytes() == big
