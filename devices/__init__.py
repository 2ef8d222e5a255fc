"""Device side of cityanchor: keys, readings, signing and publishing."""
