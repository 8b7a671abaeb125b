"""
doctor.py: walk a live cluster's pod-IP path, node by node, and name the first broken link (read-only).
"""
