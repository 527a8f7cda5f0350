"""qgjob: job queue built on NATS JetStream and PostgreSQL."""
