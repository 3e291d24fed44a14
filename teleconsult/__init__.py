"""teleconsult: assembly of the services (app factory, command line, logs, metrics)."""

__version__ = "0.1.0"
