"""Prefect flows: each task calls one ``healthpredict`` function; flow bodies read like the recipe."""
