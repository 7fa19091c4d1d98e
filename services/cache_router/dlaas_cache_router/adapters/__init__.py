"""Adapters of the cache router: the XRootD client and the caches' monitoring stream."""
