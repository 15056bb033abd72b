"""scalerec: a self-hosted, scalable recommendation engine for online stores."""

__version__ = "0.1.0"
