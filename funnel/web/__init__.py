"""`funnel serve`: the web side (unsubscribe pages, form intake, webhook receivers).

A thin shell over the same services as the CLI: each route parses the
request, calls one service function, and answers. No business rules here.
"""
