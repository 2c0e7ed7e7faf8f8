"""The model store: models.lock, resolving a name to a verified local file, pulling, and reading GGUF headers."""
