"""The ``healthpredict`` command line: one subcommand per pipeline stage, at the top of the call graph.

It reads the settings once, configures output and the embedded tools, and calls into ``healthpredict`` (the
domain), ``flows`` (Prefect) and ``service`` (Litestar); nothing below it imports it.
"""
