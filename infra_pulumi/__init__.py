"""Pulumi program (AWS) for HealthPredict; components are importable for tests and reuse.

Modules define components only; nothing runs at import. ``__main__.py`` is the program.
"""
