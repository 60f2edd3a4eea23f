"""Radiology report generation models."""
