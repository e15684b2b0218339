"""The store: tables, the database, and every write whose correctness the database guarantees.

Models and migrations, the claims ledger, set-based and driver-level SQL, worker
and per-person locks, copies and private files. The bottom layer: imports only
from itself and `funnel.errors`, so any other layer may use it.
"""
