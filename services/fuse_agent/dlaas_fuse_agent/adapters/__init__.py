"""Adapters of the fuse agent: xrootdfs mounts."""
