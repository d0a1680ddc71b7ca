from services.kit.migrations import run_env
from services.kit.models import service_metadata
from services.kit.outbox import OutboxEvent
from services.users.models import User

run_env(service_metadata(User, OutboxEvent))
