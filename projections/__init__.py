"""Read models in PostgreSQL, folded from the event stream."""
