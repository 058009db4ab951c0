"""The site file: YAML in (loader.py), a validated `SiteConfig` out (site.py), or every problem
at once (`ConfigError`); the outputs' and the policy's sections; secrets."""

from facility_agent.config.site import (
    ConfigError,
    ConfigProblem,
    SiteConfig,
    load_site,
    parse_site,
)

__all__ = ["ConfigError", "ConfigProblem", "SiteConfig", "load_site", "parse_site"]
