"""Central side: data, training, registry, export, publishing and monitoring."""
