"""The bus: topology (one module), connection and publishing, the consumer runtime."""
