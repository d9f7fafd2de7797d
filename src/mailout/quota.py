"""Routes' quotas: how many messages each route may take per second, minute, hour and day.

Kept in the database (``routes``, ``route_usage``), so the limits hold across
restarts, kill -9 and several sending processes. Owns those two tables.

To be written (issue 16, helper C).
"""

from __future__ import annotations
