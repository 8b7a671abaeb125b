# podnet: the two everyday commands are `make demo` and `make test`.
PYTHON ?= python3
DEMO_DIR ?= .demo

.PHONY: deps test test-unit test-e2e demo demo-down

# Debian packages for the local test cluster and the pause image (sudo: the run lock test of privilege
# wrappers), ruby and vagrant to check
# the Vagrantfile (no provider: nothing boots), Python packages for the toolkit and tests.
# Idempotent; needs root (apt).
deps:
	@command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null && command -v gcc >/dev/null \
	  && command -v ssh >/dev/null && command -v containerd >/dev/null && command -v sudo >/dev/null || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    debootstrap systemd-container iproute2 openssh-client gcc libc6-dev containerd dpkg-dev ca-certificates sudo; }
	@command -v ruby >/dev/null && command -v vagrant >/dev/null || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ruby vagrant; }
	$(PYTHON) -m pip install -q -r requirements-test.txt

# Unit, plan and end-to-end tests (the end-to-end ones boot local Debian nodes: root only).
test: deps
	$(PYTHON) -m pytest -q -ra

test-unit: deps
	$(PYTHON) -m pytest -q -ra -m "not e2e"

test-e2e: deps
	$(PYTHON) -m pytest -q -ra -m e2e

# Boot a 3-node local cluster, deploy podnet on it, run a pod on every node and print
# node -> podCIDR -> pod IP -> MTU. The cluster stays up until `make demo-down`.
demo: deps
	$(PYTHON) -m tests.demo up --state-dir $(DEMO_DIR)

demo-down:
	$(PYTHON) -m tests.demo down --state-dir $(DEMO_DIR)
