"""What touches the host: atomic private files, process lifetime, child supervision."""
