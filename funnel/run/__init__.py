"""The run: the job `funnel run` does, stage by stage, and serve's instant sends.

A short orchestrator (`runner`) over stages that read sources, decide, claim,
hand over and finish, all through the store's ledger. It is the layer that ties
the others together: may import `signups`, `webinar`, `mail`, the transports and
the store; never `web` or the CLI, which call it.
"""
