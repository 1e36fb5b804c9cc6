"""python -m gpubackprop.bench: the same as `gpubackprop bench`."""
import sys

from .cli import main

sys.exit(main())
