"""robinterp's library: the loops, attacks, attributions and measures that the numbered notebooks call.

Imports run one way (ARCHITECTURE.md): foundation modules (paths, device, profiles, results) import
nothing above them; `experiment.Context` is what a notebook builds from its parameters cell.
"""
