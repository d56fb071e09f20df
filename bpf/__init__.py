"""BPF sources shipped as package data (read by dynscreen.control.dataplane)."""
