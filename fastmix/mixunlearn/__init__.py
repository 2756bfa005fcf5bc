"""The method: MixUnlearn (SPEC sections 5 and 6) and the engine that runs its steps.

``config`` holds the one list of settings; ``method`` (:class:`MixUnlearn`) validates
them, sets a run up and picks a loop; ``state`` holds what a run's steps share;
``steps`` has the generator step and the unlearner step, each one body; ``loop`` (the
fast loop) and ``paper_loop`` (the eager, paper-style loop) call them.
"""
