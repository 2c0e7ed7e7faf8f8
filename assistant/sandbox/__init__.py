"""Running untrusted generated Python: isolation, limits, the runner, the pool and typed outcomes."""
