"""`changeflow`, the command for people: see cli/app.py, and the README's first run."""
