"""The packed dataset's format: the index (``manifest``, ``columns``, ``manifest_legacy``), the LMDB
shards (``shards``), record integrity (``recordguard``) and validated random access (``dataset``).
docs/format.md describes the bytes."""
