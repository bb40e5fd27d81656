"""The demo: a small Open Images-format dataset made here, and the pipeline's scripts run on it in order."""
