"""Streaming puts and gets, one function per backend, for ``FsspecStore.put_stream`` and
``open_read`` (which call them inside ``_translated``, so errors here may be third-party ones).

A create-only put commits only after the bytes are all written and, with ``sha256``, verified:

* file: a unique temp name in the target's directory, fsync, then ``os.link`` into place. A link
  refuses an existing name (EEXIST: another writer won, which is success for identical content)
  and is atomic on local filesystems and NFS alike; ``rename`` would silently replace.
* memory: the object is built in memory (where a memory store keeps it anyway), then checked and
  written under one lock.
* S3: ``If-None-Match: *`` on the PutObject or CompleteMultipartUpload that commits it (AWS since
  2024-08, moto's server too): a second writer gets 412, which s3fs turns into FileExistsError.
  An S3-compatible server that ignores the header makes it last-writer-wins; for a content-
  addressed blob that is harmless, as each writer verified its bytes against the digest the
  key names before committing, so every writer writes the same bytes.
"""

from __future__ import annotations

import io
import os
import threading
import uuid
from contextlib import suppress
from typing import Any

from fsspec.asyn import sync

from ..errors import HashMismatch
from .digest import CHUNK_SIZE, HashingReader, Reader

# S3 parts of 8 MiB (the minimum is 5 MiB): an upload holds one part in memory at a time, and a
# blob under one part goes up in a single PutObject.
S3_PART_SIZE = 8 << 20

_MEMORY_LOCK = threading.Lock()


def put_local(full: str, source: Reader, *, create_only: bool, sha256: str | None) -> bool:
    directory, _, name = full.rpartition("/")
    os.makedirs(directory, exist_ok=True)
    temp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"  # FsspecStore.list hides this pattern
    try:
        reader = HashingReader(source)
        with open(temp, "wb") as f:
            while chunk := reader.read(CHUNK_SIZE):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())  # data before the name, so a crash never leaves a short blob
        _verify(reader, sha256)
        if create_only:
            os.chmod(temp, 0o444)
            try:
                os.link(temp, full)
            except FileExistsError:
                return False
        else:
            os.replace(temp, full)
        _fsync_directory(directory)
        return True
    finally:
        with suppress(FileNotFoundError):
            os.unlink(temp)


def put_memory(fs: Any, full: str, source: Reader, *, create_only: bool, sha256: str | None) -> bool:
    reader = HashingReader(source)
    buffer = io.BytesIO()
    while chunk := reader.read(CHUNK_SIZE):
        buffer.write(chunk)
    _verify(reader, sha256)
    with _MEMORY_LOCK:
        if create_only and fs.exists(full):
            return False
        fs.pipe_file(full, buffer.getvalue())
    return True


def put_s3(fs: Any, full: str, source: Reader, *, create_only: bool, sha256: str | None) -> bool:
    bucket, key, _ = fs.split_path(full)
    condition = {"IfNoneMatch": "*"} if create_only else {}
    reader = HashingReader(source)
    part = reader.read_exactly(S3_PART_SIZE)
    if len(part) < S3_PART_SIZE:
        _verify(reader, sha256)
        return _committed(lambda: fs.call_s3("put_object", Bucket=bucket, Key=key, Body=part, **condition))
    upload = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    ids = {"Bucket": bucket, "Key": key, "UploadId": upload}
    completed = False
    try:
        parts: list[dict[str, Any]] = []
        while part:
            number = len(parts) + 1
            etag = fs.call_s3("upload_part", PartNumber=number, Body=part, **ids)["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
            part = reader.read_exactly(S3_PART_SIZE)
        _verify(reader, sha256)
        wrote = _committed(
            lambda: fs.call_s3("complete_multipart_upload", MultipartUpload={"Parts": parts}, **ids, **condition)
        )
        completed = wrote
        return wrote
    finally:
        if not completed:  # an upload left open is billed and kept by S3 until aborted
            with suppress(Exception):
                fs.call_s3("abort_multipart_upload", **ids)


class S3Reader:
    """One GetObject, its body read in chunks on s3fs's event loop. A body that ends before its
    Content-Length raises instead of passing for a complete object."""

    def __init__(self, fs: Any, full: str) -> None:
        bucket, key, _ = fs.split_path(full)
        response = fs.call_s3("get_object", Bucket=bucket, Key=key)
        self._loop = fs.loop
        self._body = response["Body"]
        self._left: int = response["ContentLength"]

    def read(self, size: int = -1, /) -> bytes:
        if self._left <= 0 or size == 0:
            return b""
        wanted = min(self._left, CHUNK_SIZE if size is None or size < 0 else size)
        data: bytes = sync(self._loop, self._body.read, wanted)
        if not data:
            raise ConnectionError(f"the object ended with {self._left} bytes still to come")
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._body.close()


def _verify(reader: HashingReader, sha256: str | None) -> None:
    if sha256 is not None and reader.digest != sha256:
        raise HashMismatch(sha256, reader.digest, reader.size)


def _committed(commit: Any) -> bool:
    try:
        commit()
    except FileExistsError:  # 412 on If-None-Match: another writer created it first
        return False
    return True


def _fsync_directory(directory: str) -> None:
    """Make the new name durable, not only the data: a blob an alias names must survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
