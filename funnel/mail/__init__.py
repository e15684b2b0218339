"""Mail: everything that turns a step and a person into an email, and nothing that sends it.

Templates, composing, calendar invitations, unsubscribe and jump links, previews
and `funnel check`'s template lint. May import the store, config, text, contacts,
`webinar` and the transport interface; never `run`, `sendgrid`, `web` or the CLI.
"""
