"""Intents validated against the current projection, and the click CLI on top."""
