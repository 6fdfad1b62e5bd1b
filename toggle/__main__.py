"""`python -m toggle`: the command line."""
from .cli import run

run()
