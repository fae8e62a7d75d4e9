"""nasflow: weight-sharing NAS methods as cached, reproducible pipeline stages."""
__version__ = "0.1.0"
