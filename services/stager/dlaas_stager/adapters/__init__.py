"""Adapters of the stager's ports."""
