"""Toy-scale ablations of the paper's claims on the demo corpus (issue #8).

Run one with ``python -m recipes.experiments.<name>``.
"""
