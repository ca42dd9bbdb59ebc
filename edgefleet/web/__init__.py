"""Web: the Flask fleet dashboard and the in-browser demo."""
