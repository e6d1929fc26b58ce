"""`python -m llmscratch ...` (also what `torchrun -m llmscratch` runs)."""

from llmscratch.cli import run

if __name__ == "__main__":
    run()
