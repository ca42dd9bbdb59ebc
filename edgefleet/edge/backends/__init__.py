"""Model runtimes the edge can score with, one module each."""
