"""The agent workspace: server-rendered pages (Django templates, a little plain JavaScript),
live over server-sent events."""
