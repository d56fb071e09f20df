"""The control plane: config, log signals, the pure engine, the data-plane loader."""
