"""Benchmark evaluation as LLaVA-1.5 / ShareGPT4V report it: prompts as LLaVA's eval scripts
build them, batched sharded resumable generation, the official metrics, and a report."""
