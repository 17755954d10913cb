"""``python -m diffjax`` runs the ``diffjax`` command."""

from diffjax.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
