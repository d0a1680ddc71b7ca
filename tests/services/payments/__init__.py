"""Tests of the payments service."""
