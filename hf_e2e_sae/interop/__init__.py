"""Converters to and from other libraries' SAE formats: one module per foreign format."""
