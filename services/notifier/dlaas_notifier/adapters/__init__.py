"""Channel adapters: the broker (notebook), SMTP, incoming webhooks."""
