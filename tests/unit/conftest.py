"""Fixtures shared by the unit tests."""

from tests.unit.service_maker import make_service

__all__ = ["make_service"]
