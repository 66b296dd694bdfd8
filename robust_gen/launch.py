"""How every entry point (recipe, tool, benchmark) starts its process: one place, called before torch loads.

Entry points begin with::

    from robust_gen.launch import start_process

    start_process()

    import torch  # and the rest

:func:`start_process` makes idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``, read once
when torch loads OpenMP: on a busy small machine spinning threads made CPU training over 10x slower; on an idle
one sleeping costs about nothing) and checks that the torch family is the pinned trio, exiting with one message
and the fix when it is not. :func:`apply_cpu_threads` then sets the intra-op thread count from a recipe's
``cpu_threads`` config key, the one threading setting of every recipe.

Examples
--------
>>> import os
>>> saved = os.environ.pop("OMP_WAIT_POLICY", None)
>>> start_process(check_torch=False); os.environ["OMP_WAIT_POLICY"]
'PASSIVE'
>>> os.environ["OMP_WAIT_POLICY"] = "ACTIVE"  # an explicit setting wins
>>> start_process(check_torch=False); os.environ["OMP_WAIT_POLICY"]
'ACTIVE'
>>> os.environ.update({"OMP_WAIT_POLICY": saved or "PASSIVE"})
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Sequence

__all__ = ["apply_cpu_threads", "start_process"]


def start_process(
    *, check_torch: bool = True, help_for: str | None = None, optional_groups: Sequence[str] = ()
) -> None:
    """Set the process-wide OpenMP wait policy and, unless ``check_torch=False``, check the torch family.

    An explicit ``OMP_WAIT_POLICY`` in the environment wins. A mismatched torch / torchaudio / torchvision exits
    with code 2 and a message naming the installed and needed versions and the pip command that fixes it.
    A recipe passes ``help_for="<recipe>/<config>"`` (and its ``+group`` ``optional_groups``): ``--help`` then
    prints the recipe's help (:mod:`robust_gen.training.recipe_help`) and exits, before torch loads.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    atexit.register(_close_process_group)
    if help_for is not None:
        from robust_gen.training.recipe_help import print_help_if_asked

        print_help_if_asked(help_for, optional_groups)
    if check_torch:
        from robust_gen.environment import exit_on_torch_mismatch

        exit_on_torch_mismatch()


def _close_process_group() -> None:
    """At exit, destroy a torch.distributed process group the run left open: otherwise its communication threads
    are torn down with the interpreter and a process can abort (``terminate called without an active exception``,
    SIGABRT) after its work is done, which a launcher reports as a failed run."""
    distributed = sys.modules.get("torch.distributed")  # never import torch just to find nothing to close
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def apply_cpu_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op CPU threads (``None`` or 0: leave torch's default, one per core).

    Tiny models gain nothing from a second thread and lose to its synchronisation on a shared machine, so the
    CPU-scale configs set 1; paper-scale configs leave it ``null``.

    Examples
    --------
    >>> import torch
    >>> before = torch.get_num_threads()
    >>> apply_cpu_threads(1); torch.get_num_threads()
    1
    >>> apply_cpu_threads(before)
    """
    if threads:
        import torch

        torch.set_num_threads(int(threads))
