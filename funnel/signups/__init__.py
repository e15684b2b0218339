"""Signups: reading exports, form posts and Zoom into contacts, tags and enrollments.

Files (csv, jsonl) and the Zoom API are read row by row and stored in bulk; form
posts wait for double opt-in (`consent`). May import the store, `webinar`,
`mail` (for the confirmation email) and the top-level helpers (config, text,
contacts); never `run`, `sendgrid`, `web` or the CLI.
"""
