"""The package version: one home (``loader.__version__`` and the wheel's metadata read it from here)."""

# 0.4.1: object-store downloads in ranged parts, sha256 shard digests, manifest version 5 for a remote
# overwrite's generation-named index. 0.4: modules by stage, LoaderSettings + augment=, ArgumentError,
# loader show; the 0.3 module paths and the flat augment keywords are deprecated until 0.5.
__version__ = "0.4.1"
