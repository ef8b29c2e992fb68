"""edgemq."""
