"""podnet tasks: one module per concern (kernel, containerd, cni, controller_manager, flannel)."""
