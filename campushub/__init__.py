"""CampusHub: a JupyterHub distribution for AI research campuses."""

__version__ = "0.1.0"
