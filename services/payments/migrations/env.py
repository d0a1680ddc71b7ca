from services.kit.migrations import run_env
from services.kit.models import service_metadata
from services.kit.outbox import OutboxEvent
from services.payments.models import (
    Payment,
    PaymentMethod,
    PaymentTransaction,
    ProviderLedgerEntry,
    ProviderVaultEntry,
)

run_env(
    service_metadata(
        PaymentMethod, Payment, PaymentTransaction, ProviderVaultEntry, ProviderLedgerEntry, OutboxEvent
    )
)
