"""
podnet: make every pod get its own IP.

    pyinfra inventory/<cluster>.py deploy.py

Runs the pod network's steps (tasks/deploys.py, POD_NETWORK, after clearing what an interrupted
run left) on every host, in order, each deciding itself whether it applies to the host; the
README's step table lists them (written from that list by `python3 -m tasks.docs`). Settings come from
inventory data (see inventory/group_data/all.py) and are validated for the whole inventory
before any host is touched. Each host is asked once (one probe, which takes the node's run
lock); a rerun with unchanged settings changes nothing and restarts nothing.
"""

from pyinfra import host

from tasks.engine import pyinfra_compat
from tasks.deploys import POD_NETWORK, steps

pyinfra_compat.enable_tcp_nodelay([host])
pyinfra_compat.fast_operation_order()
steps(*POD_NETWORK)
