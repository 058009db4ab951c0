"""The agent's own read-only NUT face (`nut_server:`): upsmon secondaries follow the plan."""
