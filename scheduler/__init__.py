"""The scheduler: a pure policy core and the service that runs it."""
