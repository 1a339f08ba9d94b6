"""Pydantic payload types: the public contract of every workflow and activity.

Pure data (no I/O), so workflows import them in the sandbox and other services read their
exported JSON Schemas.
"""
