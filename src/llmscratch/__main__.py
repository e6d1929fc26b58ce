"""`python -m llmscratch ...` (also what `torchrun -m llmscratch` runs)."""

from llmscratch.cli import main

if __name__ == "__main__":
    main()
