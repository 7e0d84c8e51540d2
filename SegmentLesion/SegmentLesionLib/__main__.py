"""``python -m SegmentLesionLib`` (also what ``torchrun -m SegmentLesionLib train`` runs)."""

import sys

from .cli import main

sys.exit(main())
