"""Chat alerts: the rules (alerting), delivery through apprise and the outbox (delivery), the
chat commands (commands) and the Matrix room that brings them (matrix), wired in `sink`."""

from facility_agent.sinks.notify.sink import NotifySink

__all__ = ["NotifySink"]
