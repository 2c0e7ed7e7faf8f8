"""`assistant serve`: OpenAI, Ollama and llama.cpp routes over the engine, scheduling, security, metrics."""
