"""Metamorphic relations: behaviour-preserving rewrites of Python source, by family (see registry.py)."""
