"""Operations: what keeps an installation running and tells the practice when it does not.

Alerts and the heartbeat, the `.env` file, `funnel init` and `funnel doctor`.
May import any layer below the CLI (config, store, transports, `mail`,
`sendgrid`); never `web` or the CLI itself.
"""
