"""dlaas notifications in JupyterLab: a server extension and the front end it serves."""

from __future__ import annotations

from dlaas_jupyter.app import DlaasJupyterApp

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, object]]:
    return [{"module": "dlaas_jupyter", "app": DlaasJupyterApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "dlaas-jupyter"}]


__all__ = ["DlaasJupyterApp", "__version__"]
