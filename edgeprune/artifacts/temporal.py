"""The temporal artifact's format: two graphs (``refresh`` recomputes every patch, ``update`` only the
patches that changed) that share caches, described by one manifest."""

TEMPORAL_KIND = "edgeprune-temporal"
TEMPORAL_FORMAT = 1
GRAPHS = ("refresh", "update")
