"""dlaas notifier service."""
