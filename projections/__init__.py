"""Read models fed from the notification log, with tracking in the same transaction.

Each read model lives in tables of its own in the service's database (PostgreSQL, or SQLite
when embedded) and holds no personal values. Run them with `lifecycle project [name...]`;
rebuild one with `lifecycle project --rebuild name`.
"""
