"""Code generation as a library call, with CodeT and cluster reranking by executing generated tests."""
