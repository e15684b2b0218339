"""Webinar sessions: their dates, their moves and cancellations, and the letters about them.

`sessions` is pure (no database, no clock); `moves` and `notices` apply a changed
sequences.yaml to enrollments. May import the store, config and timeutil, and
`signups.store` to re-time enrollments; never `run`, `sendgrid`, `web` or the CLI.
"""
