"""
podnet's code, by role.

- The concerns, one module each, where a reader looks first: ``kernel``, ``containerd``, ``cni``,
  ``controller_manager``, ``kubeadm``, ``kubeadm_config``, ``flannel``, ``pod_network`` (install side),
  ``reset`` and ``reset_controller_manager`` (taking the pod network off), ``interrupted`` (what a killed
  run left), ``vagrant`` (the Vagrant inventory helper). Each exposes ``Step``s.
- ``deploys``: the ordered step lists (``POD_NETWORK``) and the ``@deploy`` functions for anyone's own deploy.
- ``docs``: the command ``python3 -m tasks.docs`` that writes the README's settings and step tables and
  ``inventory/group_data/all.py`` from the code's declarations (``tasks.settings.docs`` is its old name).
- ``lock_checksums``: the command ``python3 -m tasks.lock_checksums`` that writes the checksum lock file
  without a deploy (``tasks.lock`` is its old name).
- ``engine/``: the step machinery, which imports no concern: ``context`` (Step, HostContext), ``runner``
  (probe once, fetch once, check, apply), ``probe`` (the one question per host), ``findings`` (what is
  wrong on a node, and refusing on it), ``ops`` (operations), ``desired`` (files as they should be),
  ``polling`` (bounded waits), ``kubectl`` (kubectl on the first control-plane host failing),
  ``run_lock`` (the node's run lock), ``run_report``, ``pyinfra_compat`` (every pyinfra internal used).
- ``artifacts/``: release files: ``catalog`` (what files/artifacts.yaml lists and where it comes from),
  ``download`` (fetch, verify, unpack on the laptop), ``checksums`` (published sums and the lock file).
- ``settings/``: the validated ``Settings`` (declared once per setting), ``docs`` (how the README table and
  inventory example lay it out), ``kubeadm_parsers`` (parsers for kubeadm's own grammar).
- ``formats/``: one module per file format podnet reads or writes, by that format's rules.
- Ground floor: ``errors`` (PodnetError), ``releases`` (release facts: which version reads which format)
  and ``redact`` (secrets masked in whatever is shown or stored: URLs with credentials, tokens).
"""

import sys as _sys

# pyinfra's CLI turns bytecode caching off for its whole process (pyinfra_cli/main.py sets
# sys.dont_write_bytecode, so that no deploy.pyc lands beside an operator's deploy files; those are exec'd,
# never written either way). podnet's modules are imported, so without this every run compiled all of them
# again from source (about 70 ms a run on the test machine): Python's own setting is put back before any of
# them is imported, the one given by -B or PYTHONDONTWRITEBYTECODE (sys.flags), and each module is then
# compiled once into tasks/**/__pycache__ and read from there by later runs.
_sys.dont_write_bytecode = bool(_sys.flags.dont_write_bytecode)
