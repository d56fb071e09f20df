# dynscreen: make setup | run | demo | test | bench  (as root)
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup run demo test test-vm bench lint clean

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/dynscreen run

demo: setup
	$(PY) -m dynscreen.control.lab demo

test: setup
	$(VENV)/bin/ruff check bpf control cli tests bench setup.py
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The data-plane tests in a Debian 12 VM on its stock 6.1 kernel (qemu + KVM; not part of
# `make test`). TEST_VM_ARGS: pytest arguments instead of the default test files.
test-vm:
	@bash scripts/test-vm.sh $(TEST_VM_ARGS)

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

bench: setup
	$(PY) bench/run.py

lint: setup
	$(VENV)/bin/ruff check bpf control cli tests bench setup.py

clean:
	rm -rf $(VENV) .pytest_cache build
	find control -name "*.so" -delete
