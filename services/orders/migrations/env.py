from services.kit.migrations import run_env
from services.kit.models import service_metadata
from services.kit.outbox import OutboxEvent
from services.orders.models import Order, OrderCommand, OrderEvent, OrderSagaStart

run_env(service_metadata(Order, OrderEvent, OrderCommand, OrderSagaStart, OutboxEvent))
