# The config file `campushub hub` gives JupyterHub: the site file named by CAMPUSHUB_CONFIG.
from campushub.hubconfig import configure

configure(c)  # noqa: F821 (`c` is provided by JupyterHub)
