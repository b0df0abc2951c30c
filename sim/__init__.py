"""LED test station hardware simulator."""
