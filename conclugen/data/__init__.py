"""Dataset adapters, manifests, media probing and the look-alike generator."""
