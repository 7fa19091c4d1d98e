"""Reproducible benchmarks of dlaas against a bare aio-pika baseline (`python -m bench`)."""
