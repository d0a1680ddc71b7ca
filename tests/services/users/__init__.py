"""Tests of the users service."""
