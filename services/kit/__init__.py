"""The small shared kit every service is built from: settings, app factory, db, errors, logs, metrics."""
