"""Tools that drive and measure the exchange from outside, over real HTTP.

- ``loadtests.fleet``: a simulated buyer fleet speaking the native buyer protocol (SPEC §4).
- ``loadtests.generator``: an open-loop publisher load generator with HDR latency histograms.
- ``loadtests.baseline``: the bare fan-out server, the ceiling the exchange is compared with.
- ``loadtests.leads``: realistic, unique publisher leads (SPEC §3).
- ``loadtests.config``: reads an exchange config dir (buyers, secrets, timing) without the exchange.
- ``loadtests.procs``: start, await and stop those tools as subprocesses (one core/loop each).
"""
