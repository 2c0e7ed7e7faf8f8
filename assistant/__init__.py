"""Local code assistant: offline code generation on small distilled GGUF models.

Importing this package must stay cheap: no llama_cpp, torch or transformers here.
"""

__version__ = "0.1.0"
