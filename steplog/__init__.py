"""steplog: durable multi-step LLM pipelines on an append-only event log."""
