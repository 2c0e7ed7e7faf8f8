"""HTTP routes, one module per API family: OpenAI, Ollama and llama.cpp server shapes."""
