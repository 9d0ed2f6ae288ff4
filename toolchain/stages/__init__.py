"""Pipeline stages. Stages do not import each other; pipeline.py wires them."""
