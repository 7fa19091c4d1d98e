"""dlaas stager service."""
