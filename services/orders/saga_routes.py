"""Saga-facing order routes (cancel, review, saga view), filled in with the Temporal-backed SagaPort."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
