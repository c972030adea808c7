"""A durable first-in-first-out queue of JSON entries in a folder of the study's storage (local or a URI).

Each entry is one file, `<sequence>.json`, written under a temporary name and then renamed, so a process
killed mid-write leaves no half entry. An entry is removed once it is done: what is on storage is exactly what
is left to do, in order, whichever process wrote it. One process at a time works a journal.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pyarrow.fs

SUFFIX = ".json"


class Journal:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._fs, self._folder = pyarrow.fs.FileSystem.from_uri(uri)
        self._fs.create_dir(self._folder)
        self._lock = threading.Lock()
        self._next = max((int(name.removesuffix(SUFFIX)) for name in self.pending()), default=-1) + 1

    @staticmethod
    def key(uri: str) -> str:
        """The folder `uri` names, the same however it is spelled (`/a/b/`, `file:///a/b`)."""
        fs, folder = pyarrow.fs.FileSystem.from_uri(uri)
        return f"{fs.type_name}://{folder.rstrip('/')}"

    def pending(self) -> list[str]:
        """The entries not done yet, oldest first."""
        infos = self._fs.get_file_info(pyarrow.fs.FileSelector(self._folder, allow_not_found=True))
        names = [i.base_name for i in infos if i.base_name.endswith(SUFFIX) and i.base_name[0].isdigit()]
        return sorted(names, key=lambda name: int(name.removesuffix(SUFFIX)))

    def put(self, entry: dict[str, Any]) -> str:
        """Write `entry` durably (before this returns); its name, which orders it after every earlier one."""
        with self._lock:
            name, self._next = f"{self._next:012d}{SUFFIX}", self._next + 1
        path, temporary = f"{self._folder}/{name}", f"{self._folder}/.{name}.tmp"
        with self._fs.open_output_stream(temporary) as f:
            f.write(json.dumps(entry).encode())
        self._fs.move(temporary, path)
        return name

    def read(self, name: str) -> dict[str, Any]:
        with self._fs.open_input_stream(f"{self._folder}/{name}") as f:
            return json.loads(f.read())

    def set_aside(self, name: str) -> str:
        """Take the entry out of the queue, keeping it beside as `<name>.unreadable`; that name."""
        kept = f"{name}.unreadable"
        self._fs.move(f"{self._folder}/{name}", f"{self._folder}/{kept}")
        return kept

    def done(self, name: str) -> None:
        try:
            self._fs.delete_file(f"{self._folder}/{name}")
        except FileNotFoundError:  # another process sent it (two at once: each entry is sent idempotently)
            pass
