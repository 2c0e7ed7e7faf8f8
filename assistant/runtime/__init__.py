"""Running a local model: the llama.cpp engine, prompt rendering, stop sequences and hardware defaults."""
