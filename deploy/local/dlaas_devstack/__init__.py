"""Local dev stack for dlaas: a real Rucio (`dlaas_devstack.rucio`) and a small lake (`dlaas_devstack.lake`).

Nothing is imported here, so `python -m dlaas_devstack.rucio` runs without a double import.
"""
