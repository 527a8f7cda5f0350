"""Embedded stack: helpers that run real NATS and PostgreSQL server processes."""
