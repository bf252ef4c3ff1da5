"""Inspecting a dataset and an installation: ``verify`` (``loader verify``), ``decodecheck`` (does a
record decode with DALI), ``doctor`` (``loader doctor``)."""
