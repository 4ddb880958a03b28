"""robinterp's library: the loops, attacks, attributions and measures that the numbered notebooks call.

Imports run one way (ARCHITECTURE.md): foundation modules (paths, device, profiles, results) import
nothing above them; `experiment.Context` is what a notebook builds from its parameters cell.
"""

import os

# Idle OpenMP threads sleep instead of spinning: on the shared 2-core CPU a PGD training step with spinning threads
# took 4x the wall time and 3.8x the CPU time (benchmarks/README.md, "A shared CPU"). OpenMP reads these once, when
# torch loads it, so they are set here, before any lib module imports torch (and inherited by the notebook kernels
# lib.pipeline starts); a value the user set stays. lib.device.QUIET_OPENMP holds the same pair for launchers.
for _key, _value in (("OMP_WAIT_POLICY", "PASSIVE"), ("KMP_BLOCKTIME", "0")):
    os.environ.setdefault(_key, _value)
