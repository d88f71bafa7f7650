"""A full disk for one file, in every process of a run (the driver, Ray workers, Tune trials).

On PYTHONPATH with BNREP_FULL_DISK=<dir>/<name> (e.g. kmeans/m-conv2.parquet): writing that file
(under its temporary name) writes half of
its bytes, then fails with ENOSPC as a full disk does. Everything else writes normally. It replaces
the store's filesystem below bnrep's own write code, so that code runs as it would on a full disk.
"""

import os

if os.environ.get("BNREP_FULL_DISK"):
    import errno

    import pyarrow.fs as pafs

    import bnrep.store

    folder, name = os.path.split(os.environ["BNREP_FULL_DISK"])

    class _HalfWritten:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

        def write(self, data):
            self.stream.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class FullDisk(pafs.LocalFileSystem):
        def open_output_stream(self, path, *args, **kwargs):
            stream = super().open_output_stream(path, *args, **kwargs)
            hit = os.path.dirname(path).endswith(folder) and path.endswith(name)
            return _HalfWritten(stream) if hit else stream

    _resolve = bnrep.store.resolve

    def resolve(out):
        fs, root = _resolve(out)
        return (FullDisk(), root) if isinstance(fs, pafs.LocalFileSystem) else (fs, root)

    bnrep.store.resolve = resolve
