"""PyTorch reference fixtures: made by make_fixtures.py, read by fixtures.py (no torch needed)."""
