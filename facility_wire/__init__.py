"""Wire codecs shared by the agent's drivers and the simulators.

A leaf package: it imports nothing but the standard library (pyghmi_sockets.py imports pyghmi
when it patches it), so the drivers (which must not import the simulators) and the simulators
(which must not import the agent) can both use it.
"""
