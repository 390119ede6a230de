import sys
from pathlib import Path

# the tests' helper models must be importable by name in spawned workers too
sys.path.insert(0, str(Path(__file__).parent))
