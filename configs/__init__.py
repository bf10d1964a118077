"""The original YAML configs, shipped as package data (read with asymvq.config)."""
