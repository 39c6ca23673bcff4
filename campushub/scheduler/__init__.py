"""Nightly notebooks: a hub-managed service that runs users' notebooks on a schedule with papermill."""
