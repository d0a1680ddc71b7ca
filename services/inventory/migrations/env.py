from services.inventory.models import InventoryProduct, InventoryReservation, InventoryReservationLine
from services.kit.migrations import run_env
from services.kit.models import service_metadata
from services.kit.outbox import OutboxEvent

run_env(service_metadata(InventoryProduct, InventoryReservation, InventoryReservationLine, OutboxEvent))
