"""REST handlers, one module per service; each ends with a ``default_handlers`` table."""
