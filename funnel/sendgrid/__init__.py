"""SendGrid, kept together: the transport, the event webhook, events and inbound replies.

Everything that knows SendGrid's payloads and rules lives here (django-anymail
keeps a provider together the same way). May import the store, contacts, the
transport interface and `mail`; never `run`, `web` or the CLI, which call it.
"""
