"""HTTP routes of the payments service."""

from services.payments.routes.authorizations import router as authorizations_router
from services.payments.routes.charges import router as charges_router
from services.payments.routes.methods import router as methods_router
from services.payments.routes.payments import router as payments_router

ROUTERS = (methods_router, charges_router, authorizations_router, payments_router)

__all__ = ["ROUTERS"]
