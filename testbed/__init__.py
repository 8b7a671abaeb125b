"""
podnet's test bed: real Kubernetes clusters without a pod network, on real Debian nodes booted
on this machine, for podnet's deploy to be run against. `make demo`, the benchmark
(`python3 -m bench.run`) and the end-to-end tests in tests/ use it; it imports no pytest (the
pytest glue, fixtures and skips, is tests/conftest.py).

- ``localcluster``: Debian nodes in systemd-nspawn on a bridge of their own, reached over SSH.
- ``kubebed``: a Kubernetes control plane, kubelets and kube-proxy on those nodes (built from
  public source, ``kubebed.binaries``), as podnet finds a cluster.
- ``mirror``: the release files podnet downloads, packed as upstream publishes them and
  served on loopback (nodes and laptop have no internet here).
- ``podbed``: one cluster plus the real pyinfra CLI running the real deploy.py, and pods
  created through the API server; ``bootbed``: the same for ``cluster_bootstrap`` (kubeadm).
- ``demo``: `make demo` / `make demo-down`.
- ``cri``: the pause image (no registry), and a CRI client (``cri.client``, which alone needs
  grpcio and grpcio-tools from requirements-test.txt).
- ``delay_proxy``: a slow link to a node, in user space (the fault tests).
- ``debian_sources``: the host's apt sources, read by ``localcluster`` and ``mirror``.

What runs here is real; what is not (images, the mirror) and this machine's quirks the bed
works around are listed in docs/testbed.md.
"""
