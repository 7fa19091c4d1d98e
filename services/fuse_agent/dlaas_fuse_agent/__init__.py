"""dlaas fuse agent service."""
