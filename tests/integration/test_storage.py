"""Object storage: the local directory store, and the S3 store over HTTP against a local S3 server (moto)."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import requests

from service.storage import LocalStore, ObjectNotFound, S3Store, open_store
from tests.helpers import free_port


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_store(s3_endpoint, monkeypatch):
    import uuid

    for var, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")):
        monkeypatch.setenv(var, value)
    bucket = f"lantern-{uuid.uuid4().hex[:8]}"
    store = open_store(f"s3://{bucket}/prefix", s3_endpoint)
    store.client.create_bucket(Bucket=bucket)
    return store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "objects")
    return request.getfixturevalue("s3_store")


@pytest.mark.s3
def test_round_trip_list_stream_delete(store):
    data = bytes(range(256)) * 1000
    store.put("jobs/a/x.bin", data, "application/octet-stream")
    store.put("jobs/a/y.png", b"\x89PNG", "image/png")
    store.put("jobs/b/z.json", b"{}", "application/json")
    assert store.get("jobs/a/x.bin") == data
    assert b"".join(store.stream("jobs/a/x.bin", chunk=4096)) == data
    assert store.list("jobs/a") == ["jobs/a/x.bin", "jobs/a/y.png"]
    store.delete("jobs/a/x.bin")
    with pytest.raises(ObjectNotFound):
        store.get("jobs/a/x.bin")
    store.check()


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a"])
def test_bad_keys_are_refused(tmp_path, key):
    with pytest.raises(ValueError):
        LocalStore(tmp_path).put(key, b"", "text/plain")


@pytest.mark.s3
def test_s3_presigned_download_over_http(s3_store):
    s3_store.put("jobs/j/result.json", b'{"ok": true}', "application/json")
    url = s3_store.presigned_url("jobs/j/result.json", "result.json", 60)
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 200 and resp.content == b'{"ok": true}'
    assert "result.json" in resp.headers.get("Content-Disposition", "")
    assert isinstance(s3_store, S3Store) and s3_store.local_path("x") is None


@pytest.mark.s3
def test_s3_check_fails_for_a_missing_bucket(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        open_store("s3://no-such-bucket-here", s3_endpoint).check()


def test_storage_url_errors():
    with pytest.raises(ValueError):
        open_store("ftp://x")
    with pytest.raises(ValueError):
        open_store("s3:///nobucket")


@pytest.mark.s3
def test_presigned_urls_name_the_public_endpoint(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    public = s3_endpoint.replace("127.0.0.1", "localhost")
    store = open_store("s3://lantern-public/x", s3_endpoint, public_url=public)
    store.client.create_bucket(Bucket="lantern-public")
    store.put("a/b.txt", b"hello", "text/plain")
    url = store.presigned_url("a/b.txt", "b.txt", 60)
    assert url.startswith(public)
    assert requests.get(url, timeout=10).content == b"hello"  # signed for the host the client calls


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    """A write the file system refuses (here a file-size limit, as a full disk would) leaves nothing behind."""
    import subprocess
    import sys

    script = (
        "import resource, signal, sys\n"
        "from service.storage import LocalStore\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "store = LocalStore(sys.argv[1])\n"
        "store.put('jobs/j/small.json', b'{}', 'application/json')\n"
        "try:\n"
        "    store.put('jobs/j/big.bin', b'x' * 100_000, 'application/octet-stream')\n"
        "except OSError as e:\n"
        "    print('refused', e.errno)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.startswith("refused"), out.stderr
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["jobs/j/small.json"]


@pytest.mark.s3
def test_s3_put_all_writes_every_file_or_none(s3_store, monkeypatch):
    """S3Store.put_all writes side by side, still all or none: a write that fails takes the others back out."""
    files = {f"jobs/j/{n}.bin": (bytes([n]) * 1000, "application/octet-stream") for n in range(6)}
    s3_store.put_all(files)
    assert s3_store.list("jobs/j") == sorted(files)
    assert all(s3_store.get(key) == data for key, (data, _) in files.items())
    put = s3_store.put

    def full_at_three(key: str, data: bytes, content_type: str) -> None:
        if key.endswith("3.bin"):
            raise OSError(28, "No space left on device")
        put(key, data, content_type)

    monkeypatch.setattr(s3_store, "put", full_at_three)
    with pytest.raises(OSError):
        s3_store.put_all({key.replace("jobs/j/", "jobs/k/"): file for key, file in files.items()})
    assert s3_store.list("jobs/k") == []


class _Interrupted(BaseException):
    """What a task's soft time limit raises in the main thread (Celery's SoftTimeLimitExceeded is one)."""


@pytest.mark.s3
def test_s3_put_all_interrupted_while_writing_leaves_nothing(s3_store, monkeypatch):
    files = {f"jobs/m/{n}.bin": (bytes([n]) * 1000, "application/octet-stream") for n in range(4)}
    put = s3_store.put

    def slow(key: str, data: bytes, content_type: str) -> None:
        time.sleep(0.3)
        put(key, data, content_type)

    def interrupt(signum, frame):
        raise _Interrupted()

    monkeypatch.setattr(s3_store, "put", slow)
    before = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)  # while put_all waits for its writes
        with pytest.raises(_Interrupted):
            s3_store.put_all(files)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
    time.sleep(0.5)  # past the writes' end: a write that outlived the interruption would be listed now
    assert s3_store.list("jobs/m") == []
