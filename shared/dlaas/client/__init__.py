"""The dlaas client: the Python API notebooks use and the ``dlaas`` command."""
