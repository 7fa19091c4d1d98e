"""dlaas cache router service."""
