"""Where datasets live: local folders and object stores (``s3://``, ``gs://``, ``az://``, ``file://``).

``store.py`` is the contract every backend meets (:class:`Store`) and the local one; the object-store
backend, the node-local shard cache and the remote pack build on it. docs/remote.md is the guide.
"""
