"""``loader pack``: an image folder in, a packed dataset out. The route: ``scan`` (or ``labelfile``)
lists SRC, ``imagecheck`` decodes each file once, ``packing`` runs the pool and writes shards and the
index (``indexwriter``), ``destination`` installs DST atomically."""
