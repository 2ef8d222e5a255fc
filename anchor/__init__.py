"""cityanchor: signed smart-city readings in RFC 9162 Merkle trees, anchored on chain."""

__version__ = "0.1.0"
