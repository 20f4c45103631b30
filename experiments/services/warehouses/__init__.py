"""Warehouses as data sources (SPEC §15): engines, events sources, sync, analysis seam."""
