"""A FileSystems scheme over a local directory, for jobs that must never touch a path with local
file APIs (os, open, glob): `tmdir:///abs/path` is the local file /abs/path, reached only through
Beam's FileSystems. Registered by importing this module (Beam finds FileSystem subclasses);
only jobs that run in this process (the embedded runner) see it."""
from __future__ import annotations

from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem

PREFIX = "tmdir://"


def _local(path: str) -> str:
    return path[len(PREFIX):] if path.startswith(PREFIX) else path


def _url(path: str) -> str:
    return path if path.startswith(PREFIX) else PREFIX + path


class DirFileSystem(LocalFileSystem):
    @classmethod
    def scheme(cls):
        return "tmdir"

    def join(self, basepath, *paths):
        return _url(super().join(_local(basepath), *paths))

    def split(self, path):
        head, tail = super().split(_local(path))
        return _url(head), tail

    def _url_dirname(self, url_or_path):
        return _url(super()._url_dirname(_local(url_or_path)))

    def _list(self, dir_or_prefix):
        import os

        for dirpath, _, files in os.walk(_local(dir_or_prefix)):
            for name in files:
                path = os.path.join(dirpath, name)
                yield FileMetadata(_url(path), os.path.getsize(path), os.path.getmtime(path))

    def metadata(self, path):
        m = super().metadata(_local(path))
        return FileMetadata(_url(m.path), m.size_in_bytes, m.last_updated_in_seconds)

    def mkdirs(self, path):
        return super().mkdirs(_local(path))

    def create(self, path, *a, **kw):
        return super().create(_local(path), *a, **kw)

    def open(self, path, *a, **kw):
        return super().open(_local(path), *a, **kw)

    def copy(self, sources, destinations):
        return super().copy([_local(p) for p in sources], [_local(p) for p in destinations])

    def rename(self, sources, destinations):
        return super().rename([_local(p) for p in sources], [_local(p) for p in destinations])

    def exists(self, path):
        return super().exists(_local(path))

    def size(self, path):
        return super().size(_local(path))

    def last_updated(self, path):
        return super().last_updated(_local(path))

    def checksum(self, path):
        return super().checksum(_local(path))

    def delete(self, paths):
        import os
        import shutil

        from apache_beam.io.filesystem import BeamIOError

        missing = {}
        for p in paths:
            local = _local(p)
            if os.path.isdir(local):
                shutil.rmtree(local)
            elif os.path.exists(local):
                os.remove(local)
            else:
                missing[p] = IOError(f"{p} not found")
        if missing:
            raise BeamIOError("Delete operation failed", missing)
