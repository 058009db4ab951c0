"""`python -m facility_agent.cli`: the same as the `facility-agent` command."""

import sys

from facility_agent.cli.main import main

sys.exit(main())
