# JupyterHub config for a CampusHub site: everything comes from the site file named by
# CAMPUSHUB_CONFIG (see campushub.example.yaml; check it with `campushub config check FILE`).
# Run it as `jupyterhub -f hub_config/jupyterhub_config.py`, with `campushub proxy` beside it,
# or simply use `campushub hub`, which does the same.
from campushub.hubconfig import configure

configure(c)  # noqa: F821 (`c` is provided by JupyterHub)
