"""LLM providers behind one async interface (see providers.base)."""
