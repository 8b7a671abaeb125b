"""podnet benchmarks (issue #5): how long a deploy, a no-op rerun and a dry run take on
local nodes compared with the cheapest pyinfra run possible, and how many remote
commands, transfer sessions and bytes each costs per host. Run: python3 -m bench.run
(see bench/README.md).
"""
