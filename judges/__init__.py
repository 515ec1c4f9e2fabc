"""Everything about judges: prompts, parsing, backends, scaling, training, evaluation.

Importing this package is cheap (no torch); backends import their heavy libraries themselves.
"""

import os

# Set before any backend imports torch: OpenMP's default spin-wait made generation 4-8x slower
# on a 2-core machine shared with other work (measured; see benchmarks/bench_judge_speed.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
