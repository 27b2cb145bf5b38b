"""python -m runners.experiments NAME [--quick] [--results-dir DIR]"""
import sys

from runners.experiments import main

sys.exit(main())
