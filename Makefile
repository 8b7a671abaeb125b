# podnet: the two everyday commands are `make demo` and `make test`.
PYTHON ?= python3
DEMO_DIR ?= .demo

.PHONY: deps deps-bed test test-unit test-e2e demo demo-down

# What the test bed (testbed/: `make demo`, the benchmark, the end-to-end tests) needs: Debian
# packages for the local nodes and the pause image, and the toolkit's Python packages.
# Idempotent; needs root (apt).
deps-bed:
	@command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null && command -v gcc >/dev/null \
	  && command -v ssh >/dev/null && command -v containerd >/dev/null || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    debootstrap systemd-container iproute2 openssh-client gcc libc6-dev containerd dpkg-dev ca-certificates; }
	$(PYTHON) -m pip install -q -r requirements.txt

# Besides the bed's: ruby and vagrant to check the Vagrantfile (no provider: nothing boots),
# sudo (the run lock test of privilege wrappers), and the test requirements (pytest; grpcio
# for the bed's CRI client; cryptography for the loopback https server; pyflakes for tests/test_static.py).
deps: deps-bed
	@command -v ruby >/dev/null && command -v vagrant >/dev/null && command -v sudo >/dev/null || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ruby vagrant sudo; }
	$(PYTHON) -m pip install -q -r requirements-test.txt

# Unit, plan and end-to-end tests (the end-to-end ones boot local Debian nodes: root only). The unit and plan
# tests are spread over the machine's cores (pytest-xdist); the end-to-end ones share booted clusters and run
# in one process, after them.
test: deps
	$(PYTHON) -m pytest -q -ra -m "not e2e" -n auto
	$(PYTHON) -m pytest -q -ra -m e2e

test-unit: deps
	$(PYTHON) -m pytest -q -ra -m "not e2e" -n auto

test-e2e: deps
	$(PYTHON) -m pytest -q -ra -m e2e

# Boot a 3-node local cluster, deploy podnet on it, run a pod on every node and print
# node -> podCIDR -> pod IP -> MTU. The cluster stays up until `make demo-down`.
demo: deps-bed
	$(PYTHON) -m testbed.demo up --state-dir $(DEMO_DIR)

demo-down:
	$(PYTHON) -m testbed.demo down --state-dir $(DEMO_DIR)
