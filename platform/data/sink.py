"""Where a cache is written: a local folder (files renamed into place) or a URI pyarrow.fs opens (files built
in a local scratch folder, then uploaded whole; an object appears only complete). Picklable: shard writers on
other processes and nodes take it."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from pyarrow import fs

from .locations import is_uri


class ShardSink:
    """The files of one cache directory, for writing."""

    def __init__(self, location: str | Path) -> None:
        self.location, self.remote = str(location), is_uri(location)
        self._opened: tuple[fs.FileSystem, str] | None = None
        if not self.remote:
            Path(location).mkdir(parents=True, exist_ok=True)

    @property
    def _fs(self) -> tuple[fs.FileSystem, str]:
        """(filesystem, root path) of a URI, opened once (resolving an S3 bucket's region is a request)."""
        if self._opened is None:
            self._opened = fs.FileSystem.from_uri(self.location)
        return self._opened

    def scratch(self, name: str) -> Path:
        """A local path to build `name` in (unique to this process), then `put` it."""
        if not self.remote:
            return Path(self.location) / f"{name}.tmp{os.getpid()}"
        digest = hashlib.sha1(self.location.encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / "avmae_prepare" / digest
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{name}.tmp{os.getpid()}"

    def put(self, scratch: Path, name: str) -> None:
        """Move a finished scratch file to `name` (atomic locally; one whole upload remotely)."""
        if not self.remote:
            os.replace(scratch, Path(self.location) / name)
            return
        filesystem, root = self._fs
        fs.copy_files(str(scratch), f"{root}/{name}", source_filesystem=fs.LocalFileSystem(),
                      destination_filesystem=filesystem)
        scratch.unlink()

    def write_bytes(self, name: str, data: bytes) -> None:
        scratch = self.scratch(name)
        scratch.write_bytes(data)
        self.put(scratch, name)

    def read_bytes(self, name: str) -> bytes:
        """A whole file; FileNotFoundError when it is not there."""
        if not self.remote:
            return (Path(self.location) / name).read_bytes()
        filesystem, root = self._fs
        if filesystem.get_file_info(f"{root}/{name}").type == fs.FileType.NotFound:
            raise FileNotFoundError(f"{self.location}: no {name}")
        with filesystem.open_input_file(f"{root}/{name}") as f:
            return f.readall()

    def names(self) -> set[str]:
        """The names of the files there now (one listing, not one request a file)."""
        if not self.remote:
            return {p.name for p in Path(self.location).iterdir()}
        filesystem, root = self._fs
        infos = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
        return {Path(info.path).name for info in infos if info.type == fs.FileType.File}
