"""The broker process tree: supervisor, writer processes, topic registry, CPU layout."""
