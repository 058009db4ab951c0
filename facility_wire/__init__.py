"""Wire codecs shared by the agent's drivers and the simulators.

A leaf package: it imports nothing but the standard library, so the drivers (which must not
import the simulators) and the simulators (which must not import the agent) can both use it.
"""
