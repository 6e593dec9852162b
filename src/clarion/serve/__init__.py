"""Serving a trained model: a search index over an audio folder (index.py) and a web page (app.py)."""
