"""The LED test station: the host daemon and CLI that drive the test board."""

__version__ = "0.1.0"
