import sys
from pathlib import Path

# the harness (a `fhirgate serve` child process, seeding through admin REST) of ../python
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
