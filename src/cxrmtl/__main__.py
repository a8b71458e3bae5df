"""``python -m cxrmtl`` (also what ``torchrun -m cxrmtl`` starts)."""

from cxrmtl.cli import main

if __name__ == "__main__":
    main()
