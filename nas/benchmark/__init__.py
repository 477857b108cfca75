"""Benchmarks with known answers that drive the real search engine (``nas benchmark ...``)."""
