"""Nightly notebooks: a hub-managed service that runs papermill notebooks on a schedule, as their owners."""
