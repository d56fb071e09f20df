# dynscreen: make setup | setup-dev | run | demo | test | bench  (as root)
# setup: the daemon's runtime only; setup-dev: what the tests, the lab and the benchmarks add.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-dev run demo test test-vm bench lint clean deb test-deb test-exim

setup:
	@bash scripts/setup.sh

setup-dev: setup
	@bash scripts/setup-dev.sh

run: setup
	$(VENV)/bin/dynscreen run

demo: setup-dev
	$(PY) -m dynscreen.control.lab demo

test: setup-dev
	$(VENV)/bin/ruff check bpf control cli tests bench setup.py
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The data-plane tests in a Debian 12 VM on its stock 6.1 kernel (qemu + KVM; not part of
# `make test`). TEST_VM_ARGS: pytest arguments instead of the default test files.
test-vm:
	@bash scripts/test-vm.sh $(TEST_VM_ARGS)

# The Debian package: build/dynscreen_<version>_<arch>.deb, checked with lintian.
deb:
	@bash scripts/build-deb.sh

# The package installed with apt in a fresh Debian 12 VM, screening its own Postfix and
# Dovecot, then removed and purged (qemu; not part of `make test`).
test-deb: deb
	@bash scripts/test-deb.sh

.PHONY: vagrant-box test-vagrant
# The Vagrant box debian-12-dynscreen (libvirt), built here from Debian packages and
# added to Vagrant (vagrant/Vagrantfile uses it by default).
vagrant-box:
	@bash scripts/vagrant-box.sh

# The two-VM lab end to end: libvirt up if needed, box if missing, vagrant up, vagrant/e2e.sh,
# vagrant destroy (not part of `make test`: long, the more so under emulation).
# E2E_ARGS: scenarios instead of all three.
test-vagrant:
	@bash scripts/test-vagrant.sh $(E2E_ARGS)

# An Exim gateway in a fresh Debian 12 VM: `make setup` and `make run` leave Exim installed
# and running, `make setup-dev` refuses (its Postfix would remove Exim) and changes nothing
# (qemu; not part of `make test`).
test-exim:
	@bash scripts/test-exim.sh

bench: setup-dev
	$(PY) bench/run.py

lint: setup-dev
	$(VENV)/bin/ruff check bpf control cli tests bench setup.py

clean:
	rm -rf $(VENV) .pytest_cache build
	find control -name "*.so" -delete
