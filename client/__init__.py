"""The typed client other services use: connecting to Temporal with the project's settings and
codec, and starting, deciding on and following change requests."""
