"""Where a compressed cache's files live: a local folder, or any URI pyarrow.fs opens (s3://bucket/prefix,
with options such as `?endpoint_override=host:port&scheme=http&region=...`; gs://, hdfs://). Remote shards are
copied whole into a local folder bounded to `max_bytes`, least recently used first out."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from pyarrow import fs

from .locations import is_uri

DEFAULT_LOCAL_BYTES = 50 * 2**30


class ShardStore:
    """Read-only access to the files of one cache directory, local or remote."""

    def __init__(
        self, location: str | Path, local_dir: str | Path | None = None, max_bytes: int = DEFAULT_LOCAL_BYTES
    ) -> None:
        self.location, self.max_bytes = str(location), max_bytes
        self.remote = is_uri(location)
        if self.remote:
            self._fs, self._root = fs.FileSystem.from_uri(self.location)
            base = Path(local_dir) if local_dir else Path(tempfile.gettempdir()) / "avmae_shards"
            self.local_dir = base / hashlib.sha1(self.location.encode()).hexdigest()[:16]
            self.local_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.local_dir = Path(location)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def exists(self, name: str) -> bool:
        if not self.remote:
            return (self.local_dir / name).exists()
        return self._fs.get_file_info(f"{self._root}/{name}").type != fs.FileType.NotFound

    def read_bytes(self, name: str) -> bytes:
        """A whole (small) file, read directly: headers and shard indexes."""
        if not self.remote:
            return (self.local_dir / name).read_bytes()
        with self._fs.open_input_file(f"{self._root}/{name}") as f:
            return f.readall()

    def local(self, name: str) -> Path:
        """A local path of the file: itself for a local cache, else a copy in the bounded local folder."""
        path = self.local_dir / name
        if not self.remote:
            return path
        with self._lock:  # one download per shard, and eviction never races a download of this process
            if path.exists():
                os.utime(path)  # most recently used
                return path
            partial = path.with_name(f"{name}.part{os.getpid()}")
            fs.copy_files(f"{self._root}/{name}", str(partial), source_filesystem=self._fs,
                          destination_filesystem=fs.LocalFileSystem())
            os.replace(partial, path)
            self._evict(keep=path)
        return path

    def _evict(self, keep: Path) -> None:
        """Delete least recently used copies until the folder holds at most `max_bytes` (never `keep`)."""
        copies = sorted((p for p in self.local_dir.iterdir() if ".part" not in p.name),
                        key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in copies)
        for old in copies:
            if total <= self.max_bytes:
                break
            if old != keep:
                total -= old.stat().st_size
                old.unlink(missing_ok=True)  # readers that mapped it keep their pages
