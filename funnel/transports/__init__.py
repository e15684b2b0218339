"""Transports deliver rendered emails: outbox (.eml files), sendgrid, memory (tests)."""
