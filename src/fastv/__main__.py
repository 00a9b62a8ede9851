"""`python -m fastv ...` (and `accelerate launch -m fastv eval ...`): the same CLI as `fastv`."""

from fastv.cli import main

if __name__ == "__main__":
    main()
