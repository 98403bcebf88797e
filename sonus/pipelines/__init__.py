"""Pipelines that chain tasks (each module imports the tasks it chains; tasks never import each other)."""
