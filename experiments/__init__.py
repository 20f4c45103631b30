"""Parcours core: experiments, assignment, events and analysis."""

__version__ = "0.1.0"
