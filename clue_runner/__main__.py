"""`python -m clue_runner …` (also `accelerate launch -m clue_runner …`): the clue-run CLI."""

from .cli import main

main()
