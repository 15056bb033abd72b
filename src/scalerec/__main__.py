"""`python -m scalerec`: the same command line as the `scalerec` script (used to spawn training)."""

from scalerec.cli import main

if __name__ == "__main__":  # spawned worker processes import this module as __mp_main__
    main()
