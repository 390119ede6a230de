"""``python -m normlens.cli`` (e.g. under ``torchrun -m``): the ``normlens`` command."""
from normlens.cli import main

main()
