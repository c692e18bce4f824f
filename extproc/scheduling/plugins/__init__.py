"""Scheduling plugins, one per file; :mod:`extproc.scheduling.registry` maps each type name to its factory."""
